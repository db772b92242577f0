{{/* Chart name, overridable. */}}
{{- define "lazymig.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name used for every object. */}}
{{- define "lazymig.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "lazymig.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "lazymig.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lazymig.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lazymig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lazymig.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "lazymig.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A digest pins the image; the tag is then only for people reading the manifest. */}}
{{- define "lazymig.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "lazymig.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lazymig.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* `lazymig health` (exit 0 healthy, 1 unhealthy, 3 unreachable) against the control API,
     as an exec probe's command; its timeout stays under the probe's own. */}}
{{- define "lazymig.healthCommand" -}}
- lazymig
- health
- --control
- {{ include "lazymig.probeEndpoint" .root | quote }}
- --timeout-ms
- {{ mul (max 1 (sub (int .probe.timeoutSeconds) 1)) 1000 | quote }}
{{- end -}}

{{/* The control API endpoint as the agent's config and the probe spell it. */}}
{{- define "lazymig.controlEndpoint" -}}
{{- if eq .Values.control.mode "tcp" -}}
{{- printf "%s:%d" .Values.control.bindAddress (int .Values.control.port) -}}
{{- else -}}
{{- printf "unix:%s/control.sock" .Values.paths.runDir -}}
{{- end -}}
{{- end -}}

{{/* What the probes connect to: a TCP control API bound to 0.0.0.0 is probed on loopback. */}}
{{- define "lazymig.probeEndpoint" -}}
{{- if and (eq .Values.control.mode "tcp") (eq .Values.control.bindAddress "0.0.0.0") -}}
{{- printf "127.0.0.1:%d" (int .Values.control.port) -}}
{{- else -}}
{{- include "lazymig.controlEndpoint" . -}}
{{- end -}}
{{- end -}}

{{/* The identity agents present with a chart-issued (shared) certificate. */}}
{{- define "lazymig.fleetIdentity" -}}
{{- printf "spiffe://%s/fleet/%s" .Values.tls.certManager.trustDomain (include "lazymig.fullname" .) -}}
{{- end -}}

{{/* Name of the Secret holding the TLS files, when they come from a Secret. */}}
{{- define "lazymig.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "lazymig.fullname" .) -}}
{{- else -}}
{{- .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Exactly one TLS source; fail early with a message that names the values. */}}
{{- define "lazymig.checkTls" -}}
{{- $n := 0 -}}
{{- if .Values.tls.existingSecret }}{{ $n = add1 $n }}{{ end -}}
{{- if .Values.tls.certManager.enabled }}{{ $n = add1 $n }}{{ end -}}
{{- if .Values.tls.hostPath }}{{ $n = add1 $n }}{{ end -}}
{{- if ne $n 1 -}}
{{- fail "set exactly one of tls.existingSecret, tls.certManager.enabled, tls.hostPath: agents refuse to talk without mutual TLS" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name is required when tls.certManager.enabled is true" -}}
{{- end -}}
{{- end -}}

{{/* Probe with kubelet's httpGet only when it can reach the API: TCP on every address, no token. */}}
{{- define "lazymig.httpProbes" -}}
{{- if and (eq .Values.control.mode "tcp") (eq .Values.control.bindAddress "0.0.0.0") (not .Values.control.tokenSecret) -}}
true
{{- end -}}
{{- end -}}
