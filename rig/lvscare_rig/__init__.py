"""lvscare's test rig: a kernel with IPVS (user-mode-linux), a lab of network namespaces with
apiserver stand-ins and simulated SSH nodes, and the demo built on them.

Its own distribution (``rig/pyproject.toml``), installed next to lvscare by ``scripts/setup``: it
never goes into lvscare's wheel, the image or a node's bundle.
"""
