"""Header names that the front and the Envoy configuration share for fallback (services/front/fallback.py)."""

# The candidates Envoy may try, set by the front's downstream pass and read by its upstream pass (one per
# attempt). Not x-vsr-*: the front removes those at every request-headers phase, also the upstream one,
# and the router's header map is shared by all attempts. Envoy removes a client-sent one before the front
# sees the request (a header_mutation filter first in the chain), so only the front can write it.
FALLBACK_CHAIN_HEADER = "x-switchyard-fallback-chain"
