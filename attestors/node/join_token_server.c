/*
 * Server half of the join_token node attestor: the payload is the token
 * itself (UTF-8). The token is consumed (single use) through the
 * datastore; the agent's ID is spiffe://<td>/spire/agent/join_token/<token>.
 * The token is a secret until consumed: it never appears in errors or logs.
 */
#include "attestors/attestor.h"

#include "common/spiffeid.h"
#include "server/datastore.h"

#include <stdio.h>
#include <string.h>

/* Tokens are UUIDs from `token generate`, but SPIRE accepts any operator string. */
#define JOIN_TOKEN_MAX 256

static int jt_configure(const sg_server_config *cfg, void **state, sg_err *err)
{
    (void)cfg;
    (void)err;
    *state = NULL;
    return 0;
}

/* A token becomes one path segment of the agent ID: SPIFFE-ID 2.2 characters only. */
static bool token_chars_ok(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

static int jt_attest(void *state, const sg_node_attest_host *host, const uint8_t *payload,
                     size_t len, sg_node_challenge_fn challenge, void *challenge_ctx,
                     sg_node_attest_result *out, sg_err *err)
{
    (void)state;
    (void)challenge;
    (void)challenge_ctx;
    if (len == 0)
        return sg_err_set(err, SG_EINVAL, "join token is empty");
    if (len > JOIN_TOKEN_MAX)
        return sg_err_set(err, SG_EINVAL, "join token is too long (%zu bytes, at most %d)", len,
                          JOIN_TOKEN_MAX);
    if (!token_chars_ok(payload, len) || (len == 1 && payload[0] == '.') ||
        (len == 2 && payload[0] == '.' && payload[1] == '.'))
        return sg_err_set(err, SG_EINVAL,
                          "join token holds characters that are not allowed in a SPIFFE ID path");

    if (host->ds == NULL)
        return sg_err_set(err, SG_EUNAVAIL, "join token attestation needs the server datastore");

    char token[JOIN_TOKEN_MAX + 1];
    memcpy(token, payload, len);
    token[len] = 0;

    sg_err e;
    sg_err_clear(&e);
    int rc = sg_ds_token_consume(host->ds, token, host->now, &e);
    if (rc == SG_ENOENT)
        rc = sg_err_set(err, SG_EPERM, "join token does not exist or has already been used");
    else if (rc == SG_EEXPIRED)
        rc = sg_err_set(err, SG_EPERM, "join token expired");
    else if (rc < 0)
        rc = sg_err_set(err, rc, "could not check join token: %s", e.msg);
    if (rc == 0) {
        sg_spiffeid id;
        char path[JOIN_TOKEN_MAX + 32];
        snprintf(path, sizeof(path), "/spire/agent/join_token/%s", token);
        rc = sg_spiffeid_from_parts(host->trust_domain, path, &id, &e);
        if (rc < 0)
            rc = sg_err_set(err, SG_EINVAL, "join token does not form a valid agent ID");
        else
            snprintf(out->agent_id, sizeof(out->agent_id), "%s", id.str);
        out->can_reattest = false;
    }
    memset(token, 0, sizeof(token));
    return rc;
}

static void jt_destroy(void *state)
{
    (void)state;
}

const sg_node_attestor_server sg_join_token_server_attestor = {
    .name = "join_token",
    .configure = jt_configure,
    .attest = jt_attest,
    .destroy = jt_destroy,
};
