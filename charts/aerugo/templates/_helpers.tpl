{{/*
Common names and labels, the rendered aerugo.toml, and where each secret comes from.
*/}}

{{- define "aerugo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "aerugo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aerugo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aerugo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aerugo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aerugo.labels" -}}
helm.sh/chart: {{ include "aerugo.chart" . }}
{{ include "aerugo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aerugo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aerugo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aerugo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The port of config.server.listen_address, e.g. 8080 for "0.0.0.0:8080". */}}
{{- define "aerugo.containerPort" -}}
{{- splitList ":" .Values.config.server.listen_address | last | int }}
{{- end }}

{{/*
aerugo.toml from .Values.config: one [section] per key of `config`, one `key = value` line per
non-null value. Strings go through toJson, whose escapes are valid in TOML basic strings; Helm
reads every YAML number as a float, so numbers are printed as integers (every numeric setting of
Aerugo is an integer); lists are JSON arrays, which TOML reads alike.
*/}}
{{- define "aerugo.toml" -}}
{{- range $section, $keys := .Values.config }}
[{{ $section }}]
{{- range $key, $value := $keys }}
{{- if kindIs "invalid" $value }}
{{- else if kindIs "string" $value }}
{{ $key }} = {{ $value | toJson }}
{{- else if kindIs "bool" $value }}
{{ $key }} = {{ $value }}
{{- else if or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) }}
{{ $key }} = {{ $value | int64 }}
{{- else if kindIs "slice" $value }}
{{ $key }} = {{ $value | toJson }}
{{- else }}
{{- fail (printf "config.%s.%s: unsupported value %v (strings, numbers, booleans and lists only)" $section $key $value) }}
{{- end }}
{{- end }}

{{ end }}
{{- end }}

{{/* Whether the chart must create its own Secret: any inline secret value. */}}
{{- define "aerugo.ownSecret" -}}
{{- if or .Values.database.url .Values.s3.accessKeyId .Values.s3.secretAccessKey .Values.redis.url .Values.admin.password .Values.signingKey.pem }}true{{ end }}
{{- end }}

{{- define "aerugo.databaseSecret" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}
{{- else if .Values.database.url }}{{ include "aerugo.fullname" . }}
{{- else }}{{ fail "database.url or database.existingSecret is required: Aerugo needs PostgreSQL or CockroachDB (postgres://…)" }}
{{- end }}
{{- end }}

{{- define "aerugo.s3Secret" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecret }}
{{- else if and .Values.s3.accessKeyId .Values.s3.secretAccessKey }}{{ include "aerugo.fullname" . }}
{{- else }}{{ fail "s3.accessKeyId and s3.secretAccessKey, or s3.existingSecret, are required with config.storage.type=s3" }}
{{- end }}
{{- end }}

{{- define "aerugo.redisSecret" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecret }}
{{- else if .Values.redis.url }}{{ include "aerugo.fullname" . }}
{{- else }}{{ fail "redis.url or redis.existingSecret is required with redis.enabled=true (set redis.enabled=false to run without Redis)" }}
{{- end }}
{{- end }}

{{/* Empty when no admin password is configured (Aerugo then generates one). */}}
{{- define "aerugo.adminSecret" -}}
{{- if .Values.admin.existingSecret }}{{ .Values.admin.existingSecret }}
{{- else if .Values.admin.password }}{{ include "aerugo.fullname" . }}
{{- end }}
{{- end }}

{{- define "aerugo.signingKeySecret" -}}
{{- if .Values.signingKey.existingSecret }}{{ .Values.signingKey.existingSecret }}
{{- else if .Values.signingKey.pem }}{{ include "aerugo.fullname" . }}
{{- else }}{{ fail "signingKey.existingSecret or signingKey.pem is required: every replica must sign tokens with the same key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)" }}
{{- end }}
{{- end }}

{{/* The secret key names inside the chart's own Secret, or the existing Secret's. */}}
{{- define "aerugo.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}
{{- define "aerugo.s3AccessKeyIdKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.accessKeyIdKey }}{{ else }}s3-access-key-id{{ end }}
{{- end }}
{{- define "aerugo.s3SecretAccessKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.secretAccessKeyKey }}{{ else }}s3-secret-access-key{{ end }}
{{- end }}
{{- define "aerugo.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}
{{- define "aerugo.adminSecretKey" -}}
{{- if .Values.admin.existingSecret }}{{ .Values.admin.existingSecretKey }}{{ else }}admin-password{{ end }}
{{- end }}
{{- define "aerugo.signingKeySecretKey" -}}
{{- if .Values.signingKey.existingSecret }}{{ .Values.signingKey.existingSecretKey }}{{ else }}token-signing-key.pem{{ end }}
{{- end }}

{{/* The database URL as an environment variable (nodes and the migration Job). */}}
{{- define "aerugo.databaseEnv" -}}
- name: AERUGO_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "aerugo.databaseSecret" . }}
      key: {{ include "aerugo.databaseSecretKey" . }}
{{- end }}
