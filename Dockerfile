# lvscare: the daemon (lvscare care), lvscare static-pod and lvscare status in one small image.
# Build: docker build -t lvscare:dev .   Without a registry or network: scripts/image (docs/operating.md).
# What the daemon needs at run time, and why (docs/operating.md#privileges):
#   CAP_NET_ADMIN  IPVS rules, the VIP route or dummy interface (netlink)
#   CAP_NET_RAW    the raw packets that reset a deleted real server's clients (every mode);
#                  iptables (link mode)
#   sysctl writes  /proc/sys is read-only in an unprivileged container: the static pod and the
#                  Helm chart write them from a privileged init container (lvscare care --run-once)
#   ip_vs module   loaded by the kernel itself on the first IPVS netlink request (no CAP_SYS_MODULE)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The package, every dependency and pip itself as wheels, so that the final stage needs no compiler,
# no index and no pip of its base. A context that brings a wheels/ directory (scripts/image: wheels
# built on the host, a Debian base without pip, a build with no network) gives them as they are.
RUN --mount=type=bind,target=/src,rw \
    mkdir /wheels \
 && if [ -d /src/wheels ]; then cp /src/wheels/*.whl /wheels/; \
    else pip wheel --no-cache-dir --wheel-dir /wheels /src pip; fi

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lvscare" \
      org.opencontainers.image.description="Node-local, health-checked IPVS path to the Kubernetes control plane" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/lvscare/lvscare"
# iptables for link mode's source NAT (both the legacy and nft backends come with it); ipset to
# find and remove the Go lvscare's VIRTUAL-IP set on nodes that move from it (docs/migrating.md).
# A base that has them already (scripts/image's) needs neither apt nor a network here.
# hadolint ignore=DL3008
RUN if ! command -v iptables >/dev/null || ! command -v ipset >/dev/null; then \
        apt-get update \
     && apt-get install -y --no-install-recommends iptables ipset \
     && rm -rf /var/lib/apt/lists/*; \
    fi
# pip runs from its wheel: the image carries no pip of its own beyond what the base brought.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    set -- /wheels/pip-*.whl \
 && python3 "$1/pip" install --no-cache-dir --no-index --find-links=/wheels --root-user-action=ignore \
        "lvscare==${VERSION}"
# sealos's own manifest runs /usr/bin/lvscare (the Go binary's path) in a privileged container
# without runAsUser: the same image must work there, so the path exists and the default user is
# root. Kubernetes gives capabilities to root processes only (no ambient capabilities): a
# non-root default would leave that pod, and any manifest without runAsUser, with none. Our own
# manifests still drop every capability but NET_ADMIN and NET_RAW.
RUN ln -s /usr/local/bin/lvscare /usr/bin/lvscare
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["lvscare"]
CMD ["--help"]
