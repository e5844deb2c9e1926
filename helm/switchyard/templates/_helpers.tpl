{{/* Names, labels and the rendered router config shared by every template. */}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-switchyard, or the release name alone when it already contains the chart name. */}}
{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Service (and Deployment) name of one component: switchyard.component (dict "root" $ "component" "front"). */}}
{{- define "switchyard.component" -}}
{{- printf "%s-%s" (include "switchyard.fullname" .root) .component -}}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: switchyard.selectorLabels (dict "root" $ "component" "front"). */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchyard.componentLabels" -}}
{{ include "switchyard.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag of a switchyard image: switchyard.image (dict "root" $ "image" .Values.front.image). */}}
{{- define "switchyard.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $registry := .root.Values.image.registry -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
{{- printf "http://%s:%d" (include "switchyard.component" (dict "root" . "component" "qdrant")) (int .Values.qdrant.ports.http) -}}
{{- else -}}
{{- .Values.qdrant.externalUrl -}}
{{- end -}}
{{- end -}}

{{/*
The router config: .Values.routerConfig with the in-cluster wiring merged over it. The wiring
(where each service listens and where the others find it) belongs to the chart, so that the
config and the Services can never disagree.
*/}}
{{- define "switchyard.routerConfigData" -}}
{{- $root := . -}}
{{- $v := .Values -}}
{{- $config := deepCopy $v.routerConfig -}}
{{- if not $config.routing -}}
{{- $_ := set $config "routing" (.Files.Get "files/default-routing.yaml" | fromYaml) -}}
{{- end -}}
{{- if and $v.cache.enabled (not $v.qdrant.enabled) (not $v.qdrant.externalUrl) -}}
{{- fail "cache.enabled needs a Qdrant: set qdrant.enabled=true (in-chart) or qdrant.externalUrl" -}}
{{- end -}}
{{- $backends := list -}}
{{- range $v.routerConfig.backends -}}
{{- $backend := deepCopy . -}}
{{- $_ := set $backend "address" (tpl (toString .address) $root) -}}
{{- $backends = append $backends $backend -}}
{{- end -}}
{{- $services := dict -}}
{{- range $name := list "decision" "guard" "cache" -}}
{{- $svc := index $v $name -}}
{{- $_ := set $services $name (dict
      "enabled" $svc.enabled
      "host" "0.0.0.0"
      "port" (int $svc.ports.grpc)
      "metrics_port" (int $svc.ports.metrics)
      "address" (printf "%s:%d" (include "switchyard.component" (dict "root" $root "component" $name)) (int $svc.ports.grpc))) -}}
{{- end -}}
{{- $_ := set $services.cache "store" "server" -}}
{{- $_ := set $services.cache "url" (include "switchyard.qdrantUrl" .) -}}
{{- $wiring := dict
      "backends" $backends
      "front" (dict "host" "0.0.0.0" "grpc_port" (int $v.front.ports.grpc) "http_port" (int $v.front.ports.http) "metrics_port" (int $v.front.ports.metrics))
      "decision" $services.decision
      "guard" $services.guard
      "cache" $services.cache
      "triton" (dict
          "managed" false
          "host" (include "switchyard.component" (dict "root" . "component" "triton"))
          "http_port" (int $v.triton.ports.http)
          "grpc_port" (int $v.triton.ports.grpc)
          "metrics_port" (int $v.triton.ports.metrics)
          "model_repository" "/opt/switchyard/triton_models")
      "models" (dict "trunk" (include "switchyard.trunk" $v.triton))
      "envoy" (dict "managed" false "host" "0.0.0.0" "listener_port" (int $v.envoy.ports.listener) "admin_port" (int $v.envoy.ports.admin))
      "simulator" (dict "enabled" false "host" "0.0.0.0" "port" (int $v.simulator.port)
                        "first_token_ms" $v.simulator.firstTokenMs "chunk_interval_ms" $v.simulator.chunkIntervalMs)
-}}
{{- toYaml (mergeOverwrite $config $wiring) -}}
{{- end -}}

{{/* Pod template annotations that roll pods when the router config changes. */}}
{{- define "switchyard.configChecksum" -}}
checksum/config: {{ include "switchyard.routerConfigData" . | sha256sum }}
{{- end -}}

{{- /* The shared trunk's precision: triton.trunkPrecision, where auto means fp32 on GPU and int8 on CPU. */}}
{{- define "switchyard.trunkPrecision" -}}
{{- $p := .trunkPrecision | default "auto" -}}
{{- if eq $p "auto" -}}
{{- if .gpu.enabled }}fp32{{ else }}int8{{ end -}}
{{- else if or (eq $p "int8") (eq $p "fp32") -}}
{{- $p -}}
{{- else -}}
{{- fail (printf "triton.trunkPrecision %q: use auto, int8 or fp32" $p) -}}
{{- end -}}
{{- end }}

{{- /* The shared trunk's size: triton.trunk, small (all-MiniLM-L6-v2, the default) or base (all-mpnet-base-v2).
       The images must be built for it (make models TRUNK=...). */}}
{{- define "switchyard.trunk" -}}
{{- $t := .trunk | default "small" -}}
{{- if or (eq $t "small") (eq $t "base") -}}
{{- $t -}}
{{- else -}}
{{- fail (printf "triton.trunk %q: use small or base" $t) -}}
{{- end -}}
{{- end }}
