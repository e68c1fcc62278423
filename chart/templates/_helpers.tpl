{{/* The namespace of every namespaced object. */}}
{{- define "mock-device.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* The seed's nameOverride: the app.kubernetes.io/name label (object names are fixed, as in the seed). */}}
{{- define "mock-device.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mock-device.labels" -}}
app.kubernetes.io/name: {{ include "mock-device.name" . }}
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
{{- define "mock-device.fleetName" -}}mock-accel-fleet{{- end -}}

{{/* global.imagePullSecrets: Secret names, or {name: x} as the seed passed them through. */}}
{{- define "mock-device.pullSecretNames" -}}
{{- range .Values.global.imagePullSecrets }}
{{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end -}}

{{- define "mock-device.pullSecrets" -}}
{{- with include "mock-device.pullSecretNames" . | trim }}
imagePullSecrets:
{{- range splitList "\n" . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}


{{/* Pod Security labels of the driver's namespace: the node agent is privileged. */}}
{{- define "mock-device.podSecurityLabels" -}}
pod-security.kubernetes.io/enforce: privileged
pod-security.kubernetes.io/audit: privileged
pod-security.kubernetes.io/warn: privileged
{{- end -}}
