/*
 * Node attestor "join_token", agent half: the attestation payload is the
 * one-time token given with -joinToken or the config's join_token. The
 * server never challenges this attestor.
 */
#include "attestors/attestor.h"

#include <stdlib.h>
#include <string.h>

typedef struct join_token_state {
    char *token; /* NULL when none is configured */
} join_token_state;

static int jt_configure(const sg_agent_config *cfg, void **state, sg_err *err)
{
    join_token_state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return sg_err_set(err, SG_ENOMEM, "join_token: out of memory");
    if (cfg != NULL && cfg->join_token != NULL && cfg->join_token[0] != '\0') {
        st->token = strdup(cfg->join_token);
        if (st->token == NULL) {
            free(st);
            return sg_err_set(err, SG_ENOMEM, "join_token: out of memory");
        }
    }
    *state = st;
    return 0;
}

static int jt_payload(void *state, uint8_t **payload, size_t *len, sg_err *err)
{
    const join_token_state *st = state;
    if (st == NULL || st->token == NULL)
        return sg_err_set(err, SG_ECONFIG, "no join token configured");
    size_t n = strlen(st->token);
    uint8_t *p = malloc(n + 1);
    if (p == NULL)
        return sg_err_set(err, SG_ENOMEM, "join_token: out of memory");
    memcpy(p, st->token, n + 1);
    *payload = p;
    *len = n;
    return 0;
}

static void jt_destroy(void *state)
{
    join_token_state *st = state;
    if (st == NULL)
        return;
    if (st->token != NULL) {
        /* The token is a credential until the server has consumed it. */
        memset(st->token, 0, strlen(st->token));
        free(st->token);
    }
    free(st);
}

const sg_node_attestor_agent sg_join_token_agent_attestor = {
    .name = "join_token",
    .configure = jt_configure,
    .payload = jt_payload,
    .challenge = NULL,
    .destroy = jt_destroy,
};
