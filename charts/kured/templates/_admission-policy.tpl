{{/*
Helpers of admission-policy.yaml: the agents' settings that the policies must know, read from the
values as the DaemonSet passes them to the agents.
*/}}

{{/*
The values of an agent flag, as a JSON list of strings: configuration.<key> (index . 1), else
extraArgs.<flag> (index . 2), each item split at commas as the agent splits a list flag. The root
context is (index . 0).
*/}}
{{- define "kured.policy.flagValues" -}}
{{- $root := index . 0 -}}
{{- $value := index $root.Values.configuration (index . 1) -}}
{{- if include "kured.unset" $value -}}
{{- $value = index ($root.Values.extraArgs | default dict) (index . 2) -}}
{{- end -}}
{{- $items := list -}}
{{- if not (include "kured.unset" $value) -}}
{{- range (kindIs "slice" $value | ternary $value (list $value)) -}}
{{- range splitList "," (toString .) -}}
{{- if trim . -}}
{{- $items = append $items (trim .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $items -}}
{{- end -}}

{{/*
A key (a label, annotation or taint key, a name) as a CEL string literal. Such keys hold letters,
digits, '.', '_', '-', '/' and ':' only; anything else stops the rendering rather than the policy.
*/}}
{{- define "kured.policy.cel" -}}
{{- if not (regexMatch "^[A-Za-z0-9._/:-]*$" .) -}}
{{- fail (printf "admissionPolicy: %q is not a Kubernetes key or name (letters, digits, '.', '_', '-', '/', ':'), so the admission policy cannot name it" .) -}}
{{- end -}}
'{{ . }}'
{{- end -}}

{{/* A list of keys as a CEL list of string literals. */}}
{{- define "kured.policy.celList" -}}
{{- $items := list -}}
{{- range . -}}
{{- $items = append $items (include "kured.policy.cel" .) -}}
{{- end -}}
[{{ join ", " $items }}]
{{- end -}}
