{{/* Base name of every object: the release name, plus "-rooms" unless it already says so. */}}
{{- define "rooms.fullname" -}}
{{- if contains "rooms" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-rooms" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rooms.labels" -}}
app.kubernetes.io/name: rooms
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (list . "gateway"). */}}
{{- define "rooms.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: rooms
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "rooms.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The roomhosts' membership, as both binaries take it. */}}
{{- define "rooms.membership" -}}
dns:{{ include "rooms.fullname" . }}-roomhost.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:{{ .Values.roomhost.port }}
{{- end -}}

{{- define "rooms.secretName" -}}
{{ include "rooms.fullname" . }}-secrets
{{- end -}}

{{/* Seconds in a Go duration such as "20s" or "1m" (whole seconds). */}}
{{- define "rooms.seconds" -}}
{{- $d := . | toString -}}
{{- if hasSuffix "ms" $d -}}1
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else -}}{{ $d | int }}
{{- end -}}
{{- end -}}

{{/* A value kept across upgrades: the existing Secret's, else a new random one. */}}
{{- define "rooms.keep" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "rooms.secretName" $root) -}}
{{- $data := dict -}}
{{- if $existing -}}
{{- $data = index $existing "data" | default dict -}}
{{- end -}}
{{- if hasKey $data $key -}}
{{ index $data $key }}
{{- else -}}
{{ randAlphaNum 48 | b64enc }}
{{- end -}}
{{- end -}}

{{- define "rooms.jwtUsesSecret" -}}
{{- if and (eq .Values.auth.mode "jwt") (hasPrefix "HS" .Values.auth.jwt.algorithm) -}}true{{- end -}}
{{- end -}}

{{/* The Redis URL env var of the roomhost. */}}
{{- define "rooms.redisEnv" -}}
- name: ROOMHOST_REDIS
{{- if .Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.secretKey }}
{{- else if .Values.redis.url }}
  value: {{ .Values.redis.url | quote }}
{{- else }}
  value: {{ printf "redis://%s-redis:6379" (include "rooms.fullname" .) | quote }}
{{- end }}
{{- end -}}

{{/* Pod spreading: anti-affinity between pods of a component, spread over zones. */}}
{{- define "rooms.spread" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
affinity:
  podAntiAffinity:
    {{- if eq $root.Values.spread.antiAffinity "hard" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "rooms.selector" (list $root $component) | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "rooms.selector" (list $root $component) | nindent 14 }}
    {{- end }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ $root.Values.spread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "rooms.selector" (list $root $component) | nindent 8 }}
{{- end -}}

{{- define "rooms.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "rooms.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "rooms.otelEnv" -}}
{{- if .Values.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otlpEndpoint | quote }}
{{- end }}
{{- end -}}

{{/* The ConfigMap with the room classes' bundles, if any. */}}
{{- define "rooms.classBundles" -}}
{{- if .Values.roomClasses.existingConfigMap -}}
{{ .Values.roomClasses.existingConfigMap }}
{{- else if .Values.roomClasses.bundles -}}
{{ include "rooms.fullname" . }}-room-classes
{{- end -}}
{{- end -}}

{{/* The Secret with the room classes' secret env, if any. */}}
{{- define "rooms.classSecret" -}}
{{- if .Values.roomClasses.existingSecret -}}
{{ .Values.roomClasses.existingSecret }}
{{- else if .Values.roomClasses.secretEnv -}}
{{ include "rooms.fullname" . }}-room-classes-env
{{- end -}}
{{- end -}}
