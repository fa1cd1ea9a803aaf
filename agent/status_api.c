/*
 * Health/Check and AgentStatus/Get under the agent's state lock: both read
 * the status the agent keeps and the cache, and answer at once.
 */
#include "agent/status_api.h"

#include "grpc/health/v1/health.pb-c.h"
#include "sigil/agent/v1/status.pb-c.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ------------------------------------------------------------ status */

void sg_agent_status_contact(sg_agent_status *s, int64_t now)
{
    s->server_reachable = true;
    s->last_server_contact = now;
    s->unreachable_since = 0;
    s->last_error[0] = '\0';
}

void sg_agent_status_failure(sg_agent_status *s, int64_t now, const char *msg,
                             const char *join_token)
{
    if (s->server_reachable || s->unreachable_since == 0)
        s->unreachable_since = now;
    s->server_reachable = false;
    sg_status_redact(s->last_error, sizeof(s->last_error), msg != NULL ? msg : "", join_token);
}

bool sg_agent_status_serving(const sg_agent_status *s, bool has_bundle, int64_t now)
{
    return s->attested && s->agent_svid_expires_at > now && has_bundle;
}

/* Appends n bytes of src at *pos in out (len bytes), dropping what does not fit. */
static void put(char *out, size_t len, size_t *pos, const char *src, size_t n)
{
    size_t room = len - 1 - *pos;
    if (n > room)
        n = room;
    memcpy(out + *pos, src, n);
    *pos += n;
}

/* Characters that end a SPIFFE ID quoted inside a message. */
static bool ends_id(char c)
{
    return c == '\0' || strchr(" \t\r\n\"'`,;()[]<>{}", c) != NULL;
}

void sg_status_redact(char *out, size_t len, const char *msg, const char *join_token)
{
    static const char scheme[] = "spiffe://";
    static const char id_mask[] = "<spiffe id>";
    static const char token_mask[] = "<join token>";
    if (len == 0)
        return;
    size_t tlen = join_token != NULL ? strlen(join_token) : 0;
    size_t pos = 0;
    const char *p = msg != NULL ? msg : "";
    while (*p != '\0' && pos < len - 1) {
        if (tlen > 0 && strncmp(p, join_token, tlen) == 0) {
            put(out, len, &pos, token_mask, sizeof(token_mask) - 1);
            p += tlen;
        } else if (strncasecmp(p, scheme, sizeof(scheme) - 1) == 0) {
            put(out, len, &pos, id_mask, sizeof(id_mask) - 1);
            p += sizeof(scheme) - 1;
            while (!ends_id(*p))
                p++;
        } else {
            put(out, len, &pos, p, 1);
            p++;
        }
    }
    out[pos] = '\0';
}

/* ------------------------------------------------------------ handlers */

static void h_check(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    const sg_status_api_deps *d = user;
    const Grpc__Health__V1__HealthCheckRequest *r =
        (const Grpc__Health__V1__HealthCheckRequest *)req;
    const char *service = r != NULL && r->service != NULL ? r->service : "";
    if (service[0] != '\0' && strcmp(service, SG_STATUS_SERVICE_NAME) != 0) {
        /* The health protocol: Check for a service the server does not know is NOT_FOUND. */
        char msg[160];
        snprintf(msg, sizeof(msg), "unknown service \"%.64s\" (known: \"\", \"%s\")", service,
                 SG_STATUS_SERVICE_NAME);
        sg_rpc_call_finish(call, GRPC_STATUS_NOT_FOUND, msg);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    bool serving =
        sg_agent_status_serving(d->status, sg_cache_has_bundle(d->cache), (int64_t)time(NULL));
    resp.status = serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                          : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    if (sg_rpc_call_send(call, &resp.base) != 0) {
        sg_rpc_call_finish(call, GRPC_STATUS_CANCELLED, "call is over");
        return;
    }
    sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
}

static void h_get(sg_rpc_call *call, const ProtobufCMessage *req, void *user)
{
    (void)req;
    const sg_status_api_deps *d = user;
    const sg_agent_status *s = d->status;
    Sigil__Agent__V1__AgentStatusResponse resp = SIGIL__AGENT__V1__AGENT_STATUS_RESPONSE__INIT;
    resp.attested = s->attested;
    resp.agent_svid_expires_at = s->agent_svid_expires_at;
    resp.server_reachable = s->server_reachable;
    resp.last_server_contact = s->last_server_contact;
    resp.last_error = (char *)s->last_error;
    resp.unreachable_since = s->unreachable_since;
    size_t ne = sg_cache_nentries(d->cache), ns = sg_cache_nsvids(d->cache);
    resp.entries = ne > UINT32_MAX ? UINT32_MAX : (uint32_t)ne;
    resp.svids = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
    resp.bundle_sequence = s->bundle_sequence;
    if (sg_rpc_call_send(call, &resp.base) != 0) {
        sg_rpc_call_finish(call, GRPC_STATUS_CANCELLED, "call is over");
        return;
    }
    sg_rpc_call_finish(call, GRPC_STATUS_OK, "");
}

int sg_status_api_register(sg_rpc_server *srv, const sg_status_api_deps *deps, sg_err *err)
{
    void *user = (void *)deps; /* handlers only read through it */
    int rc = sg_rpc_server_add_method(srv, &grpc__health__v1__health__descriptor, "Check",
                                      SG_RPC_UNARY, h_check, user, err);
    if (rc == 0)
        rc = sg_rpc_server_add_method(srv, &sigil__agent__v1__agent_status__descriptor, "Get",
                                      SG_RPC_UNARY, h_get, user, err);
    return rc;
}
