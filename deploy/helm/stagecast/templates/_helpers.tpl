{{- define "stagecast.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stagecast.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "stagecast.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "stagecast.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "stagecast.fullname" .) -}}
{{- end -}}

{{- define "stagecast.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "stagecast.fullname" .) -}}
{{- else -}}
{{- required "redis.url is required when redis.enabled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/*
The container env shared by origin and relays. Call with (dict "root" $ "role" "origin" "spec" .Values.origin).
$(NODE_IP), $(NODE_NAME), $(POD_IP) are defined first so later values can use them.
*/}}
{{- define "stagecast.env" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
- name: NODE_IP
  valueFrom: {fieldRef: {fieldPath: status.hostIP}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- {name: STAGECAST_CONFIG, value: /etc/stagecast/stagecast.toml}
- {name: STAGECAST_PORT, value: {{ $spec.ports.http | quote }}}
- name: STAGECAST_PUBLIC_URL
  value: {{ .publicUrl | default (printf "http://$(NODE_IP):%v" $spec.ports.http) | quote }}
- name: STAGECAST_CLUSTER__NODE_ID
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: STAGECAST_AUTH__TOKEN_SECRET
  valueFrom: {secretKeyRef: {name: {{ include "stagecast.secretName" $root }}, key: token-secret}}
- name: STAGECAST_API__OPERATOR_KEY
  valueFrom: {secretKeyRef: {name: {{ include "stagecast.secretName" $root }}, key: operator-key, optional: true}}
{{- if $root.Values.turn.urls }}
- name: STAGECAST_TURN__SECRET
  valueFrom: {secretKeyRef: {name: {{ include "stagecast.secretName" $root }}, key: turn-secret}}
{{- end }}
{{- if not $root.Values.webrtc.singlePort }}
- {name: STAGECAST_WEBRTC__UDP_PORT, value: "0"}  # per-peer ports (the nodes' default: one port)
{{- end }}
{{- if $root.Values.webrtc.singlePort }}
- {name: STAGECAST_WEBRTC__UDP_PORT, value: {{ $spec.ports.udp | quote }}}
- {name: STAGECAST_WEBRTC__TCP_PORT, value: {{ $spec.ports.tcp | quote }}}
- name: STAGECAST_WEBRTC__ANNOUNCE
  value: {{ $root.Values.webrtc.announce | toJson | quote }}
{{- else }}
# the fallback: a UDP port per peer connection (the image's defaults are the single ports)
- {name: STAGECAST_WEBRTC__UDP_PORT, value: "0"}
- {name: STAGECAST_WEBRTC__TCP_PORT, value: "0"}
{{- end }}
{{- end -}}

{{/* Container ports; with webrtc.singlePort the media ports are bound on the node (hostPort). */}}
{{- define "stagecast.ports" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
- name: http
  containerPort: {{ $spec.ports.http }}
  {{- if $root.Values.webrtc.singlePort }}
  hostPort: {{ $spec.ports.http }}
  {{- end }}
{{- if $root.Values.webrtc.singlePort }}
- {name: media-udp, containerPort: {{ $spec.ports.udp }}, hostPort: {{ $spec.ports.udp }}, protocol: UDP}
{{- if $spec.ports.tcp }}
- {name: media-tcp, containerPort: {{ $spec.ports.tcp }}, hostPort: {{ $spec.ports.tcp }}, protocol: TCP}
{{- end }}
{{- end }}
{{- end -}}

{{- define "stagecast.podNetwork" -}}
{{- if not .Values.webrtc.singlePort }}
# fallback: per-peer ephemeral UDP ports need the node's own addresses (deploy/README.md)
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end -}}
