{{/* The chart's name, or nameOverride. */}}
{{- define "kured.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: the name of the DaemonSet (whose annotation is the lock), of its RBAC
objects and of its ServiceAccount. A release whose name contains the chart's name is used as is, so
`helm install kured` gives the names of deploy/kured.yaml.
*/}}
{{- define "kured.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kured.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "kured.labels" -}}
app.kubernetes.io/name: {{ include "kured.name" . }}
helm.sh/chart: {{ include "kured.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The DaemonSet's selector, which cannot change: the same as upstream's chart. */}}
{{- define "kured.matchLabels" -}}
app.kubernetes.io/name: {{ include "kured.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kured.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kured.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kured.rebootMethod" -}}
{{- default "command" .Values.configuration.rebootMethod -}}
{{- end -}}

{{/*
The container's security context: containerSecurityContext when set, else what the reboot needs.
Entering the host's mount namespace (the reboot command, a sentinel command) needs a privileged
container; signalling the host's PID 1 needs CAP_KILL alone, kept by UID 0 (runtimes raise added
capabilities into the effective set only for UID 0, and systemd runs as root).
*/}}
{{- define "kured.securityContext" -}}
{{- if .Values.containerSecurityContext -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- else if and (eq (include "kured.rebootMethod" .) "signal") (not .Values.configuration.rebootSentinelCommand) -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsUser: 0
capabilities:
  drop: ["ALL"]
  add: ["KILL"]
seccompProfile:
  type: RuntimeDefault
{{- else -}}
privileged: true
runAsUser: 0
readOnlyRootFilesystem: true
{{- end -}}
{{- end -}}

{{/*
A value as a flag's argument: YAML numbers reach templates as floats, and whole ones print as
integers (a port, a signal, a count of seconds), not as 8080.0 or 1e+06.
*/}}
{{- define "kured.scalar" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Whether a configuration value leaves its flag out: null, "", false or an empty list. */}}
{{- define "kured.unset" -}}
{{- if or (kindIs "invalid" .) (and (kindIs "string" .) (eq . "")) (and (kindIs "bool" .) (not .)) (and (kindIs "slice" .) (empty .)) -}}
true
{{- end -}}
{{- end -}}

{{/*
The command-line items for flag (index . 0) with value (index . 1), as a JSON list: one item per
element of a list, none when unset.
*/}}
{{- define "kured.flag" -}}
{{- $name := index . 0 -}}
{{- $value := index . 1 -}}
{{- $items := list -}}
{{- if not (include "kured.unset" $value) -}}
{{- range (kindIs "slice" $value | ternary $value (list $value)) -}}
{{- $items = append $items (printf "--%s=%s" $name (include "kured.scalar" .)) -}}
{{- end -}}
{{- end -}}
{{- toJson $items -}}
{{- end -}}
