{{/*
Envoy pieces shared by the plain-Envoy variant and the AI Gateway hook. They mirror
services/mesh/envoy_config.py (tests/unit/helm compares the two), with the cluster addresses
pointing at Kubernetes Services instead of loopback.
*/}}

{{/* The router config as a dict, after wiring. */}}
{{- define "switchyard.routerConfig" -}}
{{- include "switchyard.routerConfigData" . -}}
{{- end -}}

{{/* The ext_proc HTTP filter (ext_proc_filter() in envoy_config.py): switchyard.extProcFilter (dict "root" $ "cluster" NAME ["name" FILTER]) */}}
{{- define "switchyard.extProcFilter" -}}
{{- $config := include "switchyard.routerConfigData" .root | fromYaml -}}
{{- $envoy := $config.envoy | default dict -}}
{{- $timeoutMs := $envoy.message_timeout_ms | default 5000 -}}
{{- $timeoutS := divf $timeoutMs 1000 -}}
{{- $grpcTimeout := maxf (mulf $timeoutS 6) 30 -}}
{{- $filter := dict
      "name" (.name | default "envoy.filters.http.ext_proc")
      "typed_config" (dict
          "@type" "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
          "grpc_service" (dict "envoy_grpc" (dict "cluster_name" .cluster) "timeout" (printf "%.0fs" $grpcTimeout))
          "failure_mode_allow" (ternary $envoy.failure_mode_allow false (hasKey $envoy "failure_mode_allow"))
          "message_timeout" (printf "%.3fs" $timeoutS)
          "allow_mode_override" true
          "mutation_rules" (dict "allow_envoy" true)
          "processing_mode" (dict
              "request_header_mode" "SEND"
              "request_body_mode" "BUFFERED"
              "response_header_mode" "SEND"
              "response_body_mode" "BUFFERED"
              "request_trailer_mode" "SKIP"
              "response_trailer_mode" "SKIP"))
-}}
{{- toYaml $filter -}}
{{- end -}}

{{/* The front as an upstream filter of the router, once per attempt (fallback_ext_proc_filter() in envoy_config.py). */}}
{{- define "switchyard.fallbackExtProcFilter" -}}
{{- $config := include "switchyard.routerConfigData" .root | fromYaml -}}
{{- $envoy := $config.envoy | default dict -}}
{{- $timeoutS := divf ($envoy.message_timeout_ms | default 5000) 1000 -}}
{{- $filter := dict
      "name" "envoy.filters.http.ext_proc"
      "typed_config" (dict
          "@type" "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
          "grpc_service" (dict "envoy_grpc" (dict "cluster_name" .cluster) "timeout" (printf "%.0fs" (maxf (mulf $timeoutS 6) 30)))
          "failure_mode_allow" (ternary $envoy.failure_mode_allow false (hasKey $envoy "failure_mode_allow"))
          "message_timeout" (printf "%.3fs" $timeoutS)
          "allow_mode_override" true
          "processing_mode" (dict
              "request_header_mode" "SEND"
              "request_body_mode" "BUFFERED"
              "response_header_mode" "SEND"
              "response_body_mode" "NONE"
              "request_trailer_mode" "SKIP"
              "response_trailer_mode" "SKIP"))
-}}
{{- toYaml $filter -}}
{{- end -}}

{{/* The routes' retry policy for routing.fallback, "{}" when off (fallback_retry_policy() in envoy_config.py;
     the defaults are FallbackPolicy's in config.py). */}}
{{- define "switchyard.fallbackRetryPolicy" -}}
{{- $config := include "switchyard.routerConfigData" . | fromYaml -}}
{{- $fb := $config.routing.fallback | default dict -}}
{{- $enabled := ternary $fb.enabled true (hasKey $fb "enabled") -}}
{{- $attempts := int ($fb.attempts | default 3) -}}
{{- $retryOn := $fb.retry_on | default (list "connect_failure" "reset" "timeout" "502" "503" "504") -}}
{{- if and $enabled (ge $attempts 2) -}}
{{- $kinds := list -}}
{{- $statuses := list -}}
{{- range $retryOn -}}
{{- $kind := toString . -}}
{{- if eq $kind "connect_failure" }}{{ $kinds = append $kinds "connect-failure" }}{{ end -}}
{{- if or (eq $kind "reset") (eq $kind "timeout") }}{{ $kinds = append $kinds "reset" }}{{ end -}}
{{- end -}}
{{- range $code := list 502 503 504 -}}
{{- if has (toString $code) (toStrings $retryOn) }}{{ $statuses = append $statuses $code }}{{ end -}}
{{- end -}}
{{- $kinds = $kinds | uniq | sortAlpha -}}
{{- if $statuses }}{{ $kinds = append $kinds "retriable-status-codes" }}{{ end -}}
{{- $policy := dict
      "retry_on" (join "," $kinds)
      "num_retries" (sub $attempts 1)
      "retry_back_off" (dict "base_interval" "0.01s" "max_interval" "0.1s") -}}
{{- if $statuses }}{{ $_ := set $policy "retriable_status_codes" $statuses }}{{ end -}}
{{- if has "timeout" $retryOn -}}
{{- $_ := set $policy "per_try_idle_timeout" (printf "%.3fs" (divf ($fb.per_try_timeout_ms | default 60000) 1000)) -}}
{{- end -}}
{{- toYaml $policy -}}
{{- else -}}
{{- "{}" -}}
{{- end -}}
{{- end -}}

{{/* One STRICT_DNS cluster (_cluster() in envoy_config.py). */}}
{{- define "switchyard.envoyCluster" -}}
{{- $cluster := dict
      "name" .name
      "type" "STRICT_DNS"
      "dns_lookup_family" "V4_PREFERRED"
      "connect_timeout" .connectTimeout
      "per_connection_buffer_limit_bytes" .bufferLimit
      "load_assignment" (dict
          "cluster_name" .name
          "endpoints" (list (dict "lb_endpoints" (list (dict "endpoint" (dict "address" (dict
              "socket_address" (dict "address" .address "port_value" (int .port))))))))) -}}
{{- if .http2 -}}
{{- $_ := set $cluster "typed_extension_protocol_options" (dict
      "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" (dict
          "@type" "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
          "explicit_http_config" (dict "http2_protocol_options" dict))) -}}
{{- end -}}
{{- toYaml $cluster -}}
{{- end -}}

{{/* Body buffer limit: front.max_body_bytes + 1 MiB headroom (BUFFER_HEADROOM in envoy_config.py). */}}
{{- define "switchyard.bufferLimit" -}}
{{- $config := include "switchyard.routerConfigData" . | fromYaml -}}
{{- $front := $config.front | default dict -}}
{{- add (int64 ($front.max_body_bytes | default 10485760)) 1048576 -}}
{{- end -}}

{{/* The backend that serves a model (backend_for() in config.py). */}}
{{- define "switchyard.backendFor" -}}
{{- $model := index .config.routing.models .model | default dict -}}
{{- $first := index .config.backends 0 -}}
{{- $model.backend | default $first.name -}}
{{- end -}}

{{/* The whole static Envoy bootstrap (build_envoy_config() in envoy_config.py). */}}
{{- define "switchyard.envoyBootstrap" -}}
{{- $root := . -}}
{{- $config := include "switchyard.routerConfigData" . | fromYaml -}}
{{- $envoy := $config.envoy -}}
{{- $bufferLimit := include "switchyard.bufferLimit" . | int64 -}}
{{- $upstreamTimeout := printf "%.0fs" (float64 ($envoy.upstream_timeout_s | default 300)) -}}
{{- $retryPolicy := include "switchyard.fallbackRetryPolicy" . | fromYaml -}}
{{- $routes := list -}}
{{- range $backend := $config.backends -}}
{{- $action := dict "cluster" (printf "backend_%s" $backend.name) "timeout" $upstreamTimeout -}}
{{- if $retryPolicy }}{{ $_ := set $action "retry_policy" $retryPolicy }}{{ end -}}
{{- $routes = append $routes (dict
      "match" (dict "prefix" "/" "headers" (list (dict "name" "x-selected-backend" "string_match" (dict "exact" $backend.name))))
      "route" $action) -}}
{{- end -}}
{{- $router := dict "@type" "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" -}}
{{- if $retryPolicy -}}
{{- $_ := set $router "upstream_http_filters" (list
      (dict "name" "envoy.filters.http.match_delegate" "typed_config" (dict
          "@type" "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
          "extension_config" (include "switchyard.fallbackExtProcFilter" (dict "root" . "cluster" "switchyard_front") | fromYaml)
          "xds_matcher" (dict "matcher_list" (dict "matchers" (list (dict
              "predicate" (dict "not_matcher" (dict "single_predicate" (dict
                  "input" (dict "name" "chain" "typed_config" (dict
                      "@type" "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
                      "header_name" "x-switchyard-fallback-chain"))
                  "value_match" (dict "safe_regex" (dict "google_re2" dict "regex" ".+")))))
              "on_match" (dict "action" (dict "name" "skip" "typed_config" (dict
                  "@type" "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter")))))))))
      (dict "name" "envoy.filters.http.upstream_codec" "typed_config" (dict
          "@type" "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"))) -}}
{{- end -}}
{{- /* A routed API without a backend chosen was not processed by the front: refused, never sent on (envoy_config.py). */ -}}
{{- range $path := list "/v1/chat/completions" "/v1/responses" "/v1/messages" -}}
{{- $routes = append $routes (dict
      "match" (dict "path" $path "headers" (list (dict "name" ":method" "string_match" (dict "exact" "POST"))))
      "direct_response" (dict "status" 503 "body" (dict "inline_string" "{\"error\": {\"message\": \"the router did not process this request (its ext_proc stream ended early); retry it\", \"type\": \"service_unavailable\", \"code\": \"router_unavailable\", \"param\": null}}"))
      "response_headers_to_add" (list (dict "header" (dict "key" "content-type" "value" "application/json") "append_action" "OVERWRITE_IF_EXISTS_OR_ADD"))) -}}
{{- end -}}
{{- $first := index $config.backends 0 -}}
{{- $routes = append $routes (dict "match" (dict "prefix" "/") "route" (dict "cluster" (printf "backend_%s" $first.name) "timeout" $upstreamTimeout)) -}}
{{- $virtualHost := dict "name" "backends" "domains" (list "*") "routes" $routes -}}
{{- if $retryPolicy -}}
{{- $_ := set $virtualHost "include_request_attempt_count" true -}}
{{- $_ := set $virtualHost "include_is_timeout_retry_header" true -}}
{{- end -}}
{{- $hcm := dict
      "@type" "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
      "stat_prefix" "switchyard"
      "codec_type" "AUTO"
      "route_config" (dict "name" "switchyard_routes" "virtual_hosts" (list $virtualHost))
      "local_reply_config" (dict "mappers" (list (dict
          "filter" (dict "status_code_filter" (dict "comparison" (dict
              "op" "EQ" "value" (dict "default_value" 413 "runtime_key" "switchyard.local_reply.413"))))
          "body_format_override" (dict "json_format" (dict "error" (dict
              "message" (printf "the request body is larger than the router accepts (%d bytes, front.max_body_bytes)" (int64 ($config.front.max_body_bytes | default 10485760)))
              "type" "invalid_request_error" "code" "request_too_large" "param" nil))))
        (dict
          "filter" (dict "response_flag_filter" (dict "flags" (list "UF" "UH" "UC" "UR" "URX" "UT" "UO" "UPE" "UMSDR")))
          "body_format_override" (dict "json_format" (dict "error" (dict
              "message" "the model's backend did not answer (%RESPONSE_CODE_DETAILS%); the router tried every candidate it may use (routing.fallback)"
              "type" "server_error" "code" "backend_unavailable" "param" nil))))))
      "early_header_mutation_extensions" (list (dict
          "name" "envoy.http.early_header_mutation.header_mutation"
          "typed_config" (dict
              "@type" "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
              "mutations" (list (dict "remove" "x-switchyard-fallback-chain")))))
      "http_filters" (list
          (include "switchyard.extProcFilter" (dict "root" . "cluster" "switchyard_front") | fromYaml)
          (dict "name" "envoy.filters.http.router" "typed_config" $router))
-}}
{{- $clusters := list (include "switchyard.envoyCluster" (dict
      "name" "switchyard_front"
      "address" (include "switchyard.component" (dict "root" . "component" "front"))
      "port" $config.front.grpc_port "http2" true "bufferLimit" $bufferLimit "connectTimeout" "1s") | fromYaml) -}}
{{- range $config.backends -}}
{{- $clusters = append $clusters (include "switchyard.envoyCluster" (dict
      "name" (printf "backend_%s" .name) "address" .address "port" .port "http2" false
      "bufferLimit" $bufferLimit "connectTimeout" "5s") | fromYaml) -}}
{{- end -}}
{{- $bootstrap := dict
      "admin" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" (int $envoy.admin_port))))
      "static_resources" (dict
          "listeners" (list (dict
              "name" "switchyard"
              "address" (dict "socket_address" (dict "address" "0.0.0.0" "port_value" (int $envoy.listener_port)))
              "per_connection_buffer_limit_bytes" $bufferLimit
              "filter_chains" (list (dict "filters" (list (dict "name" "envoy.filters.network.http_connection_manager" "typed_config" $hcm))))))
          "clusters" $clusters)
-}}
{{- toYaml $bootstrap -}}
{{- end -}}
