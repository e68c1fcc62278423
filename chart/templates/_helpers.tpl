{{/* The namespace of every namespaced object. */}}
{{- define "mock-device.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{- define "mock-device.labels" -}}
app.kubernetes.io/name: mock-device
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mock-device.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) -}}
{{- end -}}

{{- define "mock-device.controllerName" -}}mock-accel-controller{{- end -}}
{{- define "mock-device.nodeAgentName" -}}mock-accel-node-agent{{- end -}}

{{- define "mock-device.pullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}
