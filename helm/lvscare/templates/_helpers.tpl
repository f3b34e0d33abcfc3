{{- define "lvscare.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lvscare.labels" -}}
app.kubernetes.io/name: lvscare
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lvscare.selector" -}}
app.kubernetes.io/name: lvscare
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lvscare.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "v%s" .Chart.AppVersion) }}
{{- end -}}

{{- /* lvscare care's arguments, in the order `lvscare static-pod` writes them
       (tests/unit/test_chart.py checks that both agree for the same values). */ -}}
{{- define "lvscare.args" -}}
- care
- --vs
- {{ .Values.virtualServer | quote }}
- --health-path
- {{ .Values.health.path | quote }}
- --health-schem
- {{ .Values.health.scheme | quote }}
{{- range .Values.realServers }}
- --rs
- {{ . | quote }}
{{- end }}
{{- if .Values.discover }}
- --discover-from
- /etc/kubernetes/kubelet.conf
- --state-dir
- /var/lib/lvscare
{{- end }}
- --mode
- {{ .Values.mode | quote }}
- --health-timeout
- {{ .Values.health.timeout | quote }}
- --interval
- {{ .Values.health.interval | quote }}
- --rise
- {{ .Values.health.rise | quote }}
- --fall
- {{ .Values.health.fall | quote }}
{{- range .Values.health.status }}
- --health-status
- {{ . | quote }}
{{- end }}
{{- with .Values.health.ca }}
- {{ printf "--health-ca=%s" . | quote }}
{{- end }}
{{- with .Values.health.cert }}
- {{ printf "--health-cert=%s" . | quote }}
{{- end }}
{{- with .Values.health.key }}
- {{ printf "--health-key=%s" . | quote }}
{{- end }}
- --metrics-address
- {{ .Values.metrics.address | quote }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "lvscare.metricsPort" -}}
{{- splitList ":" .Values.metrics.address | last -}}
{{- end -}}

{{- /* The probes' certificate files, mounted from the node at the same path (read-only), in the
       order `lvscare static-pod` writes them. */ -}}
{{- define "lvscare.certVolumes" -}}
{{- range $name := list "ca" "cert" "key" }}
{{- with index $.Values.health $name }}
- name: health-{{ $name }}
  hostPath:
    path: {{ . | quote }}
    type: File
{{- end }}
{{- end }}
{{- end -}}

{{- define "lvscare.certMounts" -}}
{{- range $name := list "ca" "cert" "key" }}
{{- with index $.Values.health $name }}
- name: health-{{ $name }}
  mountPath: {{ . | quote }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}


{{- /* Discovery: the kubelet's kubeconfig and certificates (read-only), the state directory. */ -}}
{{- define "lvscare.discoveryVolumes" -}}
{{- if .Values.discover }}
- name: kubelet-conf
  hostPath:
    path: /etc/kubernetes/kubelet.conf
    type: File
- name: kubelet-pki
  hostPath:
    path: /var/lib/kubelet/pki
    type: Directory
- name: lvscare-state
  hostPath:
    path: /var/lib/lvscare
    type: DirectoryOrCreate
{{- end }}
{{- end -}}

{{- define "lvscare.discoveryMounts" -}}
{{- if .Values.discover }}
- name: kubelet-conf
  mountPath: /etc/kubernetes/kubelet.conf
  readOnly: true
- name: kubelet-pki
  mountPath: /var/lib/kubelet/pki
  readOnly: true
- name: lvscare-state
  mountPath: /var/lib/lvscare
{{- end }}
{{- end -}}
