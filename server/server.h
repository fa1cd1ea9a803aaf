/*
 * The sg_server context: owns the config, datastore, CA, in-memory entry
 * index and both gRPC endpoints (node API on TCP, admin API on a Unix
 * socket). main builds one and passes it down; there are no globals.
 */
#ifndef SG_SERVER_SERVER_H
#define SG_SERVER_SERVER_H

#include "common/config.h"
#include "common/err.h"
#include "server/ca.h"
#include "server/datastore.h"
#include "server/jwt_authority.h"

typedef struct sg_server sg_server;

/* Opens the datastore, loads or creates the CA, prepares endpoints. */
int sg_server_new(sg_server **out, const sg_server_config *cfg, sg_err *err);

/* Serves until SIGTERM/SIGINT, then stops within a few seconds. */
int sg_server_run(sg_server *s, sg_err *err);

void sg_server_free(sg_server *s);

/* Borrowed accessors for the API modules. Thread-safe. */
sg_datastore *sg_server_datastore(sg_server *s);
sg_ca *sg_server_ca(sg_server *s);
const sg_server_config *sg_server_config_get(sg_server *s);
sg_jwt_authority *sg_server_jwt(sg_server *s);

/*
 * The sequence number of the trust bundle agents get: it moves whenever the
 * X.509 authorities or the JWT keys (or their taint) change. Thread-safe.
 */
uint64_t sg_server_bundle_sequence(sg_server *s);

/*
 * Tells the server that registration entries or agents changed through the
 * admin API, so cached authorisation data is rebuilt. Thread-safe.
 */
void sg_server_entries_changed(sg_server *s);
void sg_server_agents_changed(sg_server *s, const char *agent_id);

#endif
