/*
 * Node API mint throughput: each thread attests as its own agent with a join
 * token, then calls MintX509SVIDs in batches for one entry it is authorised
 * for, for a fixed duration. Prints SVIDs minted per second.
 *
 *   bench_mint HOST PORT BUNDLE_PEM TRUST_DOMAIN SECONDS BATCH TOKEN:ENTRY_ID...
 */
#include "agent/node_client.h"
#include "common/config.h"
#include "common/key.h"

#include <grpc/grpc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct worker {
    pthread_t thread;
    sg_agent_config cfg;
    char token[128];
    char entry_id[64];
    const uint8_t *spki;
    size_t spki_len;
    int batch;
    double seconds;
    size_t minted;
    size_t refused;
    int failed;
} worker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run_worker(void *arg)
{
    worker *w = arg;
    sg_node_client *c = NULL;
    sg_mint_request *reqs = calloc((size_t)w->batch, sizeof *reqs);
    sg_mint_result *res = calloc((size_t)w->batch, sizeof *res);
    sg_err err;
    double end;

    if (sg_node_client_new(&c, &w->cfg, &err) < 0 ||
        sg_node_client_ensure_svid(c, w->token, &err) < 0) {
        fprintf(stderr, "bench_mint: attestation failed: %s\n", err.msg);
        w->failed = 1;
        goto out;
    }
    for (int i = 0; i < w->batch; i++) {
        reqs[i].entry_id = w->entry_id;
        reqs[i].spki = w->spki;
        reqs[i].spki_len = w->spki_len;
    }
    end = now_s() + w->seconds;
    while (now_s() < end) {
        if (sg_node_client_mint(c, reqs, (size_t)w->batch, res, &err) < 0) {
            fprintf(stderr, "bench_mint: mint failed: %s\n", err.msg);
            w->failed = 1;
            break;
        }
        for (int i = 0; i < w->batch; i++) {
            if (res[i].code == 0)
                w->minted++;
            else if (w->refused++ == 0)
                fprintf(stderr, "bench_mint: refused: %s\n", res[i].error);
            sg_mint_result_cleanup(&res[i]);
        }
    }
out:
    sg_node_client_free(c);
    free(reqs);
    free(res);
    return NULL;
}

int main(int argc, char **argv)
{
    EVP_PKEY *key = NULL;
    uint8_t *spki = NULL;
    size_t spki_len = 0, total = 0, refused = 0;
    int nworkers = argc - 7, failed = 0;
    worker *workers;
    sg_err err;
    double t0, elapsed;

    if (argc < 8) {
        fprintf(
            stderr,
            "usage: bench_mint HOST PORT BUNDLE_PEM TRUST_DOMAIN SECONDS BATCH TOKEN:ENTRY...\n");
        return 2;
    }
    grpc_init();
    if (sg_key_generate(SG_KEY_EC_P256, &key, &err) < 0 ||
        sg_key_to_spki_der(key, &spki, &spki_len, &err) < 0) {
        fprintf(stderr, "bench_mint: %s\n", err.msg);
        return 1;
    }
    workers = calloc((size_t)nworkers, sizeof *workers);
    for (int i = 0; i < nworkers; i++) {
        worker *w = &workers[i];
        const char *sep = strchr(argv[7 + i], ':');

        if (sep == NULL || (size_t)(sep - argv[7 + i]) >= sizeof w->token) {
            fprintf(stderr, "bench_mint: expected TOKEN:ENTRY_ID, got %s\n", argv[7 + i]);
            return 2;
        }
        memcpy(w->token, argv[7 + i], (size_t)(sep - argv[7 + i]));
        snprintf(w->entry_id, sizeof w->entry_id, "%s", sep + 1);
        w->cfg.server_address = argv[1];
        w->cfg.server_port = (int)strtol(argv[2], NULL, 10);
        w->cfg.trust_bundle_path = argv[3];
        snprintf(w->cfg.trust_domain, sizeof w->cfg.trust_domain, "%s", argv[4]);
        w->cfg.data_dir = (char *)(uintptr_t) "/nonexistent";
        w->cfg.join_token_enabled = true;
        w->cfg.keys_on_disk = false;
        w->cfg.log_level = SG_LOG_WARN;
        w->seconds = strtod(argv[5], NULL);
        w->batch = (int)strtol(argv[6], NULL, 10);
        w->spki = spki;
        w->spki_len = spki_len;
    }
    t0 = now_s();
    for (int i = 0; i < nworkers; i++)
        pthread_create(&workers[i].thread, NULL, run_worker, &workers[i]);
    for (int i = 0; i < nworkers; i++) {
        pthread_join(workers[i].thread, NULL);
        total += workers[i].minted;
        refused += workers[i].refused;
        failed |= workers[i].failed;
    }
    elapsed = now_s() - t0;
    printf("mint_svids %zu\n", total);
    printf("mint_refused %zu\n", refused);
    printf("mint_seconds %.2f\n", elapsed);
    printf("mint_svids_per_s %.0f\n", (double)total / elapsed);
    OPENSSL_free(spki);
    EVP_PKEY_free(key);
    free(workers);
    grpc_shutdown_blocking();
    return failed;
}
