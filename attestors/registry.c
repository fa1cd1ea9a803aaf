/*
 * The tables of built-in agent-side attestors (the server halves are in
 * registry_server.c, linked only into sigil-server). Adding one is a new file implementing a
 * vtable from attestor.h and one line here.
 */
#include "attestors/attestor.h"

#include <string.h>

static const sg_workload_attestor *const workload_attestors[] = {
    &sg_unix_workload_attestor,
};

static const sg_node_attestor_agent *const node_agent_attestors[] = {
    &sg_join_token_agent_attestor,
};

#define LOOKUP(table, name)                                                                        \
    do {                                                                                           \
        for (size_t i = 0; i < sizeof(table) / sizeof((table)[0]); i++)                            \
            if (strcmp((table)[i]->name, (name)) == 0)                                             \
                return (table)[i];                                                                 \
        return NULL;                                                                               \
    } while (0)

const sg_workload_attestor *sg_registry_workload(const char *name)
{
    LOOKUP(workload_attestors, name);
}

const sg_node_attestor_agent *sg_registry_node_agent(const char *name)
{
    LOOKUP(node_agent_attestors, name);
}
