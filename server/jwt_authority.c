/*
 * JWT signing key slots (prepared, active, old) on the X.509 CA's rotation
 * schedule. Each key is a reference-counted object, so a signature in
 * flight keeps its key while rotation replaces the slot array. With
 * KeyManager "disk" every key lives in keys_dir as jwt-<kid>.key (0600)
 * and the slot states in jwt-slots.json (0600).
 */
#include "server/jwt_authority.h"

#include "common/fsutil.h"
#include "common/log.h"
#include "common/spiffeid.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KEY_TTL_DEFAULT_S (24 * 3600)
#define PREPARE_MAX_S     (30 * 86400)
#define ACTIVATE_MAX_S    (7 * 86400)
#define SLOTS_MAX         16
#define STATE_FILE        "jwt-slots.json"
#define STATE_FILE_MAX    (256 * 1024)

/* One signing key; shared by its slot and signatures in flight. */
typedef struct jkey {
    atomic_int refs;
    EVP_PKEY *key;
    sg_jwt_alg alg;
    char kid[SG_JWT_KID_MAX + 1];
    sg_der spki;
    int64_t issued_at;
    int64_t expires_at;
    _Atomic int64_t signed_until;    /* latest exp of a token it signed */
    _Atomic int64_t persisted_until; /* what jwt-slots.json promises: >= signed_until */
} jkey;

typedef struct slot {
    jkey *k;
    sg_jwt_key_state state;
    bool tainted;
    int64_t tainted_at;
    bool on_disk;
} slot;

struct sg_jwt_authority {
    pthread_mutex_t mu;     /* guards slots, nslots and gen */
    pthread_mutex_t rot_mu; /* serialises slot changes and the files in keys_dir */
    slot slots[SLOTS_MAX];  /* oldest first */
    size_t nslots;
    uint64_t gen;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_key_type key_type;
    sg_jwt_alg alg;
    int64_t key_ttl_s, default_ttl_s, max_ttl_s;
    char *keys_dir;
    char *issuer;
};

/* ------------------------------------------------------------ keys */

static void jkey_unref(jkey *k)
{
    if (k == NULL || atomic_fetch_sub(&k->refs, 1) != 1)
        return;
    EVP_PKEY_free(k->key);
    sg_der_cleanup(&k->spki);
    free(k);
}

/* Wraps key (taken). */
static int jkey_new(EVP_PKEY *key, sg_jwt_alg alg, int64_t issued_at, int64_t expires_at,
                    jkey **out, sg_err *err)
{
    jkey *k = calloc(1, sizeof *k);
    uint8_t *der = NULL;
    size_t len = 0;
    int rc;

    if (k == NULL) {
        EVP_PKEY_free(key);
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    }
    atomic_init(&k->refs, 1);
    atomic_init(&k->signed_until, 0);
    atomic_init(&k->persisted_until, 0);
    k->key = key;
    k->alg = alg;
    k->issued_at = issued_at;
    k->expires_at = expires_at;
    rc = sg_jwt_kid(key, k->kid, err);
    if (rc == 0)
        rc = sg_key_to_spki_der(key, &der, &len, err);
    if (rc == 0) {
        k->spki.data = malloc(len ? len : 1);
        if (k->spki.data == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
        } else {
            memcpy(k->spki.data, der, len);
            k->spki.len = len;
        }
    }
    OPENSSL_free(der);
    if (rc < 0) {
        jkey_unref(k);
        return rc;
    }
    *out = k;
    return 0;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* A new key of the configured type, valid key_ttl_s from now. */
static int generate(sg_jwt_authority *a, int64_t now, jkey **out, sg_err *err)
{
    EVP_PKEY *key = NULL;
    int rc = sg_key_generate(a->key_type, &key, err);

    if (rc < 0)
        return rc;
    rc = jkey_new(key, a->alg, now, now + a->key_ttl_s, out, err);
    if (rc == 0)
        sg_log_info("created JWT authority kid=%s (%s, %s, expires %lld)", (*out)->kid,
                    sg_key_type_name(a->key_type), sg_jwt_alg_name(a->alg),
                    (long long)(*out)->expires_at);
    return rc;
}

/* Whether key is of the configured type. */
static bool key_matches(const sg_jwt_authority *a, EVP_PKEY *key)
{
    switch (a->key_type) {
    case SG_KEY_EC_P256:
    case SG_KEY_EC_P384: {
        char group[64];
        const char *want = a->key_type == SG_KEY_EC_P256 ? "prime256v1" : "secp384r1";
        if (!EVP_PKEY_is_a(key, "EC") ||
            EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, NULL) != 1)
            return false;
        return strcmp(group, want) == 0;
    }
    case SG_KEY_RSA_2048:
        return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == 2048;
    case SG_KEY_RSA_4096:
        return EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == 4096;
    }
    return false;
}

/* ------------------------------------------------------------ slots */

const char *sg_jwt_key_state_name(sg_jwt_key_state s)
{
    switch (s) {
    case SG_JWT_KEY_PREPARED:
        return "prepared";
    case SG_JWT_KEY_ACTIVE:
        return "active";
    case SG_JWT_KEY_OLD:
        return "old";
    }
    return "unknown";
}

static int state_parse(const char *s, sg_jwt_key_state *out)
{
    for (int i = SG_JWT_KEY_PREPARED; i <= SG_JWT_KEY_OLD; i++)
        if (s != NULL && strcmp(s, sg_jwt_key_state_name((sg_jwt_key_state)i)) == 0) {
            *out = (sg_jwt_key_state)i;
            return 0;
        }
    return -1;
}

/* A kid from disk or a request: 1-32 base64url characters. */
static bool kid_ok(const char *kid)
{
    size_t n = kid ? strlen(kid) : 0;

    if (n == 0 || n > SG_JWT_KID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = kid[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

static slot *find_state(sg_jwt_authority *a, sg_jwt_key_state st)
{
    for (size_t i = 0; i < a->nslots; i++)
        if (a->slots[i].state == st)
            return &a->slots[i];
    return NULL;
}

static slot *find_kid(sg_jwt_authority *a, const char *kid)
{
    for (size_t i = 0; i < a->nslots; i++)
        if (strcmp(a->slots[i].k->kid, kid) == 0)
            return &a->slots[i];
    return NULL;
}

static int slot_info(const slot *sl, sg_jwt_authority_info *out, sg_err *err)
{
    memset(out, 0, sizeof *out);
    memcpy(out->kid, sl->k->kid, sizeof out->kid);
    out->state = sl->state;
    out->issued_at = sl->k->issued_at;
    out->expires_at = sl->k->expires_at;
    out->tainted = sl->tainted;
    out->tainted_at = sl->tainted_at;
    out->signed_until = atomic_load(&sl->k->signed_until);
    out->spki.data = malloc(sl->k->spki.len ? sl->k->spki.len : 1);
    if (out->spki.data == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    memcpy(out->spki.data, sl->k->spki.data, sl->k->spki.len);
    out->spki.len = sl->k->spki.len;
    return 0;
}

void sg_jwt_authority_info_cleanup(sg_jwt_authority_info *i)
{
    if (i != NULL)
        sg_der_cleanup(&i->spki);
}

void sg_jwt_authority_infos_free(sg_jwt_authority_info *v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++)
        sg_der_cleanup(&v[i].spki);
    free(v);
}

/* ------------------------------------------------------------ files */

static char *key_path(const sg_jwt_authority *a, const char *kid)
{
    char name[SG_JWT_KID_MAX + 16];

    snprintf(name, sizeof name, "jwt-%s.key", kid);
    return sg_fs_join(a->keys_dir, name);
}

/* Writes new key files and the state file. rot_mu held. */
static int save_state(sg_jwt_authority *a, sg_err *err)
{
    json_t *root, *arr;
    char *text, *path;
    int rc = 0;

    if (a->keys_dir == NULL)
        return 0;
    for (size_t i = 0; i < a->nslots; i++) {
        slot *sl = &a->slots[i];
        char *kp;
        if (sl->on_disk)
            continue;
        kp = key_path(a, sl->k->kid);
        rc = kp ? sg_key_write_file(kp, sl->k->key, err)
                : sg_err_set(err, SG_ENOMEM, "out of memory");
        free(kp);
        if (rc < 0)
            return rc;
        sl->on_disk = true;
    }
    arr = json_array();
    pthread_mutex_lock(&a->mu);
    root = json_pack("{s:i,s:I,s:o}", "version", 1, "generation", (json_int_t)a->gen, "keys", arr);
    for (size_t i = 0; root != NULL && i < a->nslots; i++) {
        const slot *sl = &a->slots[i];
        int64_t su = atomic_load(&sl->k->signed_until), pu = atomic_load(&sl->k->persisted_until);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:I,s:I,s:b,s:I,s:I}", "kid", sl->k->kid,
                                             "state", sg_jwt_key_state_name(sl->state), "issued_at",
                                             (json_int_t)sl->k->issued_at, "expires_at",
                                             (json_int_t)sl->k->expires_at, "tainted", sl->tainted,
                                             "tainted_at", (json_int_t)sl->tainted_at,
                                             "signed_until", (json_int_t)(su > pu ? su : pu)));
    }
    pthread_mutex_unlock(&a->mu);
    text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    path = sg_fs_join(a->keys_dir, STATE_FILE);
    if (text == NULL || path == NULL)
        rc = sg_err_set(err, SG_ENOMEM, "out of memory saving the JWT authority state");
    else
        rc = sg_fs_write_atomic(path, text, strlen(text), 0600, err);
    free(text);
    free(path);
    return rc;
}

static bool json_int_or_absent(json_t *v)
{
    return v == NULL || json_is_integer(v);
}

/* Loads the slots listed in the state file; unusable keys are dropped with a warning. */
static int load_state(sg_jwt_authority *a, const char *path, int64_t now, sg_err *err)
{
    uint8_t *data = NULL;
    size_t len = 0, n;
    json_t *root, *arr, *gen;
    json_error_t je;
    int rc = sg_fs_read_file(path, STATE_FILE_MAX, &data, &len, err);

    if (rc < 0)
        return rc;
    root = json_loadb((const char *)data, len, 0, &je);
    free(data);
    if (root == NULL)
        return sg_err_set(err, SG_ECONFIG,
                          "JWT authority state file %.150s is not valid JSON (line %d: %.60s); "
                          "fix it or remove it to start with a new key",
                          path, je.line, je.text);
    arr = json_object_get(root, "keys");
    gen = json_object_get(root, "generation");
    if (!json_is_array(arr) || !json_int_or_absent(gen)) {
        json_decref(root);
        return sg_err_set(err, SG_ECONFIG,
                          "JWT authority state file %.150s lacks a \"keys\" array or has a "
                          "non-integer \"generation\"",
                          path);
    }
    if (gen != NULL && json_integer_value(gen) > 0)
        a->gen = (uint64_t)json_integer_value(gen);
    n = json_array_size(arr);
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *o = json_array_get(arr, i);
        const char *kid = json_string_value(json_object_get(o, "kid"));
        const char *st = json_string_value(json_object_get(o, "state"));
        json_t *ia = json_object_get(o, "issued_at"), *ea = json_object_get(o, "expires_at");
        json_t *ta = json_object_get(o, "tainted_at"), *su = json_object_get(o, "signed_until");
        sg_jwt_key_state state;
        char *kp;
        EVP_PKEY *key = NULL;
        jkey *k = NULL;
        sg_jwt_alg alg;
        sg_err e2;

        if (!kid_ok(kid) || state_parse(st, &state) < 0 || !json_is_integer(ea) ||
            !json_int_or_absent(ia) || !json_int_or_absent(ta) || !json_int_or_absent(su)) {
            rc = sg_err_set(err, SG_ECONFIG,
                            "JWT authority state file %.150s: key %zu has a bad kid \"%.40s\", "
                            "state \"%.20s\" or times",
                            path, i, kid ? kid : "(none)", st ? st : "(none)");
            break;
        }
        if (a->nslots >= SLOTS_MAX || find_kid(a, kid) != NULL) {
            sg_log_warn("JWT authority state file %s: ignoring extra or repeated key %s", path,
                        kid);
            continue;
        }
        if (json_integer_value(ea) <= now) {
            sg_log_info("JWT authority kid=%s expired: dropping it", kid);
            continue;
        }
        kp = key_path(a, kid);
        if (kp == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            break;
        }
        if (access(kp, F_OK) != 0) {
            sg_log_warn("JWT authority kid=%s: %s is missing; dropping it", kid, kp);
            free(kp);
            continue;
        }
        /* An unreadable or world-readable key file is an error, never silently replaced. */
        rc = sg_key_read_file(kp, &key, err);
        free(kp);
        if (rc < 0)
            break;
        sg_err_clear(&e2);
        if (sg_jwt_alg_for_key(key, &alg, &e2) < 0) {
            sg_log_warn("JWT authority kid=%s: %s; dropping it", kid, e2.msg);
            EVP_PKEY_free(key);
            continue;
        }
        if (state != SG_JWT_KEY_OLD && !key_matches(a, key)) {
            /* Tokens it signed must still validate: keep publishing it, never sign with it. */
            sg_log_warn("JWT authority kid=%s differs from jwt_key_type %s: retiring it", kid,
                        sg_key_type_name(a->key_type));
            state = SG_JWT_KEY_OLD;
        } else if (state != SG_JWT_KEY_OLD) {
            alg = a->alg;
        }
        rc = jkey_new(key, alg, ia ? (int64_t)json_integer_value(ia) : now,
                      (int64_t)json_integer_value(ea), &k, err);
        if (rc < 0)
            break;
        if (strcmp(k->kid, kid) != 0) {
            sg_log_warn("JWT authority kid=%s: its key has kid %s; dropping it", kid, k->kid);
            jkey_unref(k);
            continue;
        }
        atomic_store(&k->signed_until, su ? (int64_t)json_integer_value(su) : 0);
        atomic_store(&k->persisted_until, atomic_load(&k->signed_until));
        a->slots[a->nslots].k = k;
        a->slots[a->nslots].state = state;
        a->slots[a->nslots].tainted = json_is_true(json_object_get(o, "tainted"));
        a->slots[a->nslots].tainted_at = ta ? (int64_t)json_integer_value(ta) : 0;
        a->slots[a->nslots].on_disk = true;
        a->nslots++;
    }
    json_decref(root);
    /* At most one active and one prepared: the newest wins, the others become old. */
    for (size_t i = 0; rc == 0 && i < a->nslots; i++)
        for (size_t j = i + 1; j < a->nslots; j++)
            if (a->slots[i].state != SG_JWT_KEY_OLD && a->slots[i].state == a->slots[j].state)
                a->slots[i].state = SG_JWT_KEY_OLD;
    return rc;
}

/* ------------------------------------------------------------ lifecycle */

int sg_jwt_authority_new(sg_jwt_authority **out, const sg_jwt_authority_options *opts, int64_t now,
                         sg_err *err)
{
    sg_jwt_authority *a;
    char *state_path = NULL;
    bool loaded = false;
    int rc = 0;

    if (opts == NULL || opts->trust_domain == NULL)
        return sg_err_set(err, SG_ECONFIG, "the JWT authority needs a trust domain");
    a = calloc(1, sizeof *a);
    if (a == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory creating the JWT authority");
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->rot_mu, NULL);
    a->key_type = opts->key_type;
    a->alg = opts->alg;
    a->key_ttl_s = opts->key_ttl_s > 0 ? opts->key_ttl_s : KEY_TTL_DEFAULT_S;
    a->default_ttl_s =
        opts->default_svid_ttl_s > 0 ? opts->default_svid_ttl_s : SG_JWT_SVID_TTL_DEFAULT_S;
    a->max_ttl_s = opts->max_svid_ttl_s;
    if ((opts->keys_dir != NULL && (a->keys_dir = strdup(opts->keys_dir)) == NULL) ||
        (opts->issuer != NULL && opts->issuer[0] != '\0' &&
         (a->issuer = strdup(opts->issuer)) == NULL)) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory creating the JWT authority");
        goto fail;
    }
    rc = sg_trust_domain_parse(opts->trust_domain, a->td, err);
    if (rc < 0)
        goto fail;
    if (a->keys_dir != NULL) {
        rc = sg_fs_mkdir_p(a->keys_dir, 0700, err);
        if (rc < 0)
            goto fail;
        state_path = sg_fs_join(a->keys_dir, STATE_FILE);
        if (state_path == NULL) {
            rc = sg_err_set(err, SG_ENOMEM, "out of memory");
            goto fail;
        }
        if (access(state_path, F_OK) == 0) {
            loaded = true;
            rc = load_state(a, state_path, now, err);
        }
        if (rc < 0)
            goto fail;
    }
    if (find_state(a, SG_JWT_KEY_ACTIVE) == NULL) {
        slot *prep = find_state(a, SG_JWT_KEY_PREPARED);
        if (prep != NULL) {
            prep->state = SG_JWT_KEY_ACTIVE;
            sg_log_info("activating prepared JWT authority kid=%s", prep->k->kid);
        } else if (a->nslots >= SLOTS_MAX) {
            rc = sg_err_set(err, SG_ETOOBIG, "no room for a new JWT authority");
            goto fail;
        } else {
            jkey *k = NULL;
            rc = generate(a, now, &k, err);
            if (rc < 0)
                goto fail;
            a->slots[a->nslots].k = k;
            a->slots[a->nslots].state = SG_JWT_KEY_ACTIVE;
            a->nslots++;
            if (loaded)
                a->gen++;
        }
    }
    rc = save_state(a, err);
    if (rc < 0)
        goto fail;
    free(state_path);
    *out = a;
    return 0;
fail:
    free(state_path);
    sg_jwt_authority_free(a);
    return rc;
}

void sg_jwt_authority_free(sg_jwt_authority *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->nslots; i++)
        jkey_unref(a->slots[i].k);
    free(a->keys_dir);
    free(a->issuer);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->rot_mu);
    free(a);
}

/* ------------------------------------------------------------ signing */

void sg_jwt_svid_cleanup(sg_jwt_svid *s)
{
    if (s == NULL)
        return;
    free(s->token);
    memset(s, 0, sizeof *s);
}

int sg_jwt_audience_check(const char *const *aud, size_t naud, sg_err *err)
{
    if (naud == 0 || aud == NULL)
        return sg_err_set(err, SG_EINVAL, "at least one audience is required");
    if (naud > SG_JWT_AUD_MAX)
        return sg_err_set(err, SG_EINVAL, "too many audiences: %zu (at most %d)", naud,
                          SG_JWT_AUD_MAX);
    for (size_t i = 0; i < naud; i++) {
        size_t len = aud[i] ? strlen(aud[i]) : 0;
        if (len == 0)
            return sg_err_set(err, SG_EINVAL, "audience %zu is empty", i + 1);
        if (len > SG_JWT_AUD_LEN_MAX)
            return sg_err_set(err, SG_EINVAL, "audience %zu is too long: %zu bytes (at most %d)",
                              i + 1, len, SG_JWT_AUD_LEN_MAX);
        for (size_t j = 0; j < len; j++)
            if ((unsigned char)aud[i][j] < 0x20 || aud[i][j] == 0x7f)
                return sg_err_set(err, SG_EINVAL,
                                  "audience %zu \"%.64s\" contains a control character", i + 1,
                                  aud[i]);
    }
    return 0;
}

int sg_jwt_authority_sign(sg_jwt_authority *a, const char *spiffe_id, const char *const *aud,
                          size_t naud, int64_t ttl_s, int64_t now, sg_jwt_svid *out, sg_err *err)
{
    sg_spiffeid id;
    sg_err e2;
    slot *act;
    jkey *k = NULL;
    char *token = NULL;
    int64_t exp, prev;
    int rc;

    if (spiffe_id == NULL || spiffe_id[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "a SPIFFE ID is required");
    sg_err_clear(&e2);
    if (sg_spiffeid_parse(spiffe_id, &id, &e2) < 0)
        return sg_err_set(err, SG_EINVAL, "invalid SPIFFE ID: %s", e2.msg);
    if (!sg_spiffeid_member_of(&id, a->td))
        return sg_err_set(err, SG_EINVAL, "SPIFFE ID \"%.128s\" is not in the trust domain \"%s\"",
                          spiffe_id, a->td);
    rc = sg_jwt_audience_check(aud, naud, err);
    if (rc < 0)
        return rc;
    if (ttl_s <= 0)
        ttl_s = a->default_ttl_s;
    pthread_mutex_lock(&a->mu);
    act = find_state(a, SG_JWT_KEY_ACTIVE);
    if (act != NULL) {
        k = act->k;
        atomic_fetch_add(&k->refs, 1);
    }
    pthread_mutex_unlock(&a->mu);
    if (k == NULL)
        return sg_err_set(err, SG_EUNAVAIL, "no active JWT authority");
    /* JWT-SVID 3: a token never outlives the key that validates it. */
    exp = ttl_s > k->expires_at - now ? k->expires_at : now + ttl_s;
    if (exp <= now) {
        rc = sg_err_set(err, SG_EUNAVAIL, "the active JWT authority kid=%s has expired", k->kid);
        jkey_unref(k);
        return rc;
    }
    if (a->keys_dir != NULL && exp > atomic_load(&k->persisted_until)) {
        /* What a key signed must hold back its revoke after a restart too, so
         * the state file promises a bound before the token exists: raised
         * ahead of use (now + 2 x ttl) so this write is rare. */
        pthread_mutex_lock(&a->rot_mu);
        if (exp > atomic_load(&k->persisted_until)) {
            int64_t ahead = min64(now + 2 * ttl_s, k->expires_at);
            atomic_store(&k->persisted_until, ahead > exp ? ahead : exp);
            rc = save_state(a, err);
        }
        pthread_mutex_unlock(&a->rot_mu);
        if (rc < 0) {
            jkey_unref(k);
            return rc;
        }
    }
    sg_jwt_claims c = {
        .sub = id.str, .aud = aud, .naud = naud, .iat = now, .exp = exp, .iss = a->issuer};
    rc = sg_jwt_sign(k->key, k->alg, k->kid, &c, &token, err);
    if (rc == 0) {
        prev = atomic_load(&k->signed_until);
        while (prev < exp && !atomic_compare_exchange_weak(&k->signed_until, &prev, exp))
            ;
        memset(out, 0, sizeof *out);
        out->token = token;
        out->issued_at = now;
        out->expires_at = exp;
        memcpy(out->kid, k->kid, sizeof out->kid);
    }
    jkey_unref(k);
    return rc;
}

/* ------------------------------------------------------------ published keys */

int sg_jwt_authority_list(sg_jwt_authority *a, sg_jwt_authority_info **out, size_t *n, sg_err *err)
{
    sg_jwt_authority_info *v;
    size_t i;
    int rc = 0;

    pthread_mutex_lock(&a->mu);
    v = calloc(a->nslots ? a->nslots : 1, sizeof *v);
    for (i = 0; v != NULL && i < a->nslots && rc == 0; i++)
        rc = slot_info(&a->slots[i], &v[i], err);
    pthread_mutex_unlock(&a->mu);
    if (v == NULL || rc < 0) {
        sg_jwt_authority_infos_free(v, i);
        return rc < 0 ? rc : sg_err_set(err, SG_ENOMEM, "out of memory listing JWT authorities");
    }
    *out = v;
    *n = i;
    return 0;
}

void sg_jwt_authority_keys_free(sg_jwt_key *keys, size_t n)
{
    for (size_t i = 0; keys != NULL && i < n; i++) {
        free(keys[i].kid);
        sg_der_cleanup(&keys[i].spki);
    }
    free(keys);
}

int sg_jwt_authority_keys(sg_jwt_authority *a, sg_jwt_key **keys, size_t *n, sg_err *err)
{
    sg_jwt_key *v;
    size_t i;
    bool oom = false;

    pthread_mutex_lock(&a->mu);
    v = calloc(a->nslots ? a->nslots : 1, sizeof *v);
    for (i = 0; v != NULL && i < a->nslots; i++) {
        const jkey *k = a->slots[i].k;
        v[i].kid = strdup(k->kid);
        v[i].spki.data = malloc(k->spki.len ? k->spki.len : 1);
        v[i].expires_at = k->expires_at;
        if (v[i].kid == NULL || v[i].spki.data == NULL) {
            oom = true;
            i++;
            break;
        }
        memcpy(v[i].spki.data, k->spki.data, k->spki.len);
        v[i].spki.len = k->spki.len;
    }
    pthread_mutex_unlock(&a->mu);
    if (v == NULL || oom) {
        sg_jwt_authority_keys_free(v, i);
        return sg_err_set(err, SG_ENOMEM, "out of memory listing JWT keys");
    }
    *keys = v;
    *n = i;
    return 0;
}

void sg_jwt_authority_kids_free(char **kids, size_t n)
{
    for (size_t i = 0; kids != NULL && i < n; i++)
        free(kids[i]);
    free(kids);
}

int sg_jwt_authority_tainted(sg_jwt_authority *a, char ***kids, size_t *n, sg_err *err)
{
    char **v;
    size_t k = 0;

    pthread_mutex_lock(&a->mu);
    v = calloc(a->nslots ? a->nslots : 1, sizeof *v);
    for (size_t i = 0; v != NULL && i < a->nslots; i++) {
        if (!a->slots[i].tainted)
            continue;
        v[k] = strdup(a->slots[i].k->kid);
        if (v[k] == NULL) {
            sg_jwt_authority_kids_free(v, k);
            v = NULL;
            break;
        }
        k++;
    }
    pthread_mutex_unlock(&a->mu);
    if (v == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory listing tainted JWT authorities");
    *kids = v;
    *n = k;
    return 0;
}

uint64_t sg_jwt_authority_generation(sg_jwt_authority *a)
{
    uint64_t g;

    pthread_mutex_lock(&a->mu);
    g = a->gen;
    pthread_mutex_unlock(&a->mu);
    return g;
}

/* ------------------------------------------------------------ rotation */

/* Removes slot i and its key file. rot_mu held. */
static void drop_slot(sg_jwt_authority *a, size_t i)
{
    jkey *k;
    char *kp;

    pthread_mutex_lock(&a->mu);
    k = a->slots[i].k;
    memmove(&a->slots[i], &a->slots[i + 1], (a->nslots - i - 1) * sizeof a->slots[0]);
    a->nslots--;
    memset(&a->slots[a->nslots], 0, sizeof a->slots[0]);
    a->gen++;
    pthread_mutex_unlock(&a->mu);
    if (a->keys_dir != NULL && (kp = key_path(a, k->kid)) != NULL) {
        unlink(kp);
        free(kp);
    }
    jkey_unref(k);
}

/* Adds k (taken) as the prepared key, replacing one that exists. rot_mu held. */
static int add_prepared(sg_jwt_authority *a, jkey *k, sg_err *err)
{
    slot *prev = find_state(a, SG_JWT_KEY_PREPARED);

    if (prev != NULL) {
        sg_log_info("replacing prepared JWT authority kid=%s", prev->k->kid);
        drop_slot(a, (size_t)(prev - a->slots));
    }
    if (a->nslots >= SLOTS_MAX) {
        jkey_unref(k);
        return sg_err_set(err, SG_ETOOBIG,
                          "%d JWT authorities are kept already; revoke or wait for old ones to "
                          "expire",
                          SLOTS_MAX);
    }
    pthread_mutex_lock(&a->mu);
    memset(&a->slots[a->nslots], 0, sizeof a->slots[0]);
    a->slots[a->nslots].k = k;
    a->slots[a->nslots].state = SG_JWT_KEY_PREPARED;
    a->nslots++;
    a->gen++;
    pthread_mutex_unlock(&a->mu);
    sg_log_info("prepared JWT authority kid=%s", k->kid);
    return 0;
}

/* Makes prep active and the current active old. rot_mu held. */
static void activate(sg_jwt_authority *a, slot *prep)
{
    slot *act = find_state(a, SG_JWT_KEY_ACTIVE);
    char prev[SG_JWT_KID_MAX + 1] = "none";

    pthread_mutex_lock(&a->mu);
    if (act != NULL) {
        act->state = SG_JWT_KEY_OLD;
        memcpy(prev, act->k->kid, sizeof prev);
    }
    prep->state = SG_JWT_KEY_ACTIVE;
    a->gen++;
    pthread_mutex_unlock(&a->mu);
    sg_log_info("activated JWT authority kid=%s (previous: %s)", prep->k->kid, prev);
}

/* When no token an old key signed can be live any more. */
static int64_t live_until(const sg_jwt_authority *a, const slot *sl, int64_t since)
{
    int64_t until = sl->k->expires_at;

    if (a->max_ttl_s > 0) {
        /* The configured TTLs bound what it signed before this process started;
         * what it signed since is known exactly. */
        int64_t live = since + a->max_ttl_s;
        int64_t signed_until = atomic_load(&sl->k->signed_until);
        if (signed_until > live)
            live = signed_until;
        until = min64(until, live);
    }
    return until;
}

static int rotate_locked(sg_jwt_authority *a, int64_t now, bool *changed, sg_err *err)
{
    int64_t ttl = a->key_ttl_s, remaining;
    int64_t prep_at = min64(ttl / 2, PREPARE_MAX_S), act_at = min64(ttl / 6, ACTIVATE_MAX_S);
    bool dirty = false;
    slot *act, *prep;
    int rc;

    /* An old key stays published until every token it signed has expired:
     * tokens never outlive their key, so its expiry is the bound. */
    for (size_t i = 0; i < a->nslots;) {
        slot *sl = &a->slots[i];
        if (sl->state != SG_JWT_KEY_ACTIVE && sl->k->expires_at <= now) {
            sg_log_info("JWT authority kid=%s (%s) expired: removing it", sl->k->kid,
                        sg_jwt_key_state_name(sl->state));
            drop_slot(a, i);
            dirty = true;
        } else {
            i++;
        }
    }
    act = find_state(a, SG_JWT_KEY_ACTIVE);
    remaining = act ? act->k->expires_at - now : 0;
    prep = find_state(a, SG_JWT_KEY_PREPARED);
    if (prep == NULL && remaining < prep_at) {
        jkey *k = NULL;
        rc = generate(a, now, &k, err);
        if (rc == 0)
            rc = add_prepared(a, k, err);
        if (rc < 0)
            return rc;
        dirty = true;
        act = find_state(a, SG_JWT_KEY_ACTIVE);
        prep = find_state(a, SG_JWT_KEY_PREPARED);
    }
    if (prep != NULL && (act == NULL || remaining < act_at)) {
        activate(a, prep);
        dirty = true;
    }
    if (changed != NULL)
        *changed = dirty;
    return dirty ? save_state(a, err) : 0;
}

int sg_jwt_authority_rotate(sg_jwt_authority *a, int64_t now, bool *changed, sg_err *err)
{
    int rc;

    pthread_mutex_lock(&a->rot_mu);
    rc = rotate_locked(a, now, changed, err);
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}

static int fill_out(const slot *sl, sg_jwt_authority_info *out, sg_err *err)
{
    return out != NULL ? slot_info(sl, out, err) : 0;
}

int sg_jwt_authority_prepare(sg_jwt_authority *a, int64_t now, sg_jwt_authority_info *out,
                             sg_err *err)
{
    jkey *k = NULL;
    char kid[SG_JWT_KID_MAX + 1];
    int rc;

    /* Key generation (seconds for RSA-4096) runs before the lock: signing may wait on it. */
    rc = generate(a, now, &k, err);
    if (rc < 0)
        return rc;
    memcpy(kid, k->kid, sizeof kid);
    pthread_mutex_lock(&a->rot_mu);
    rc = add_prepared(a, k, err);
    if (rc == 0)
        rc = save_state(a, err);
    if (rc == 0)
        rc = fill_out(find_kid(a, kid), out, err);
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}

/* Finds kid for an operator action; checks its syntax first. rot_mu held. */
static int lookup(sg_jwt_authority *a, const char *kid, slot **out, sg_err *err)
{
    if (kid == NULL || kid[0] == '\0')
        return sg_err_set(err, SG_EINVAL, "an authority ID is required (-authorityID)");
    if (!kid_ok(kid))
        return sg_err_set(err, SG_EINVAL,
                          "authority ID \"%.64s\" is not valid: it is the key ID (kid) of a JWT "
                          "authority, up to %d base64url characters",
                          kid, SG_JWT_KID_MAX);
    *out = find_kid(a, kid);
    if (*out == NULL)
        return sg_err_set(err, SG_ENOENT, "no JWT authority with ID %s", kid);
    return 0;
}

int sg_jwt_authority_activate(sg_jwt_authority *a, const char *kid, int64_t now,
                              sg_jwt_authority_info *out, sg_err *err)
{
    slot *sl = NULL;
    int rc;

    (void)now;
    pthread_mutex_lock(&a->rot_mu);
    rc = lookup(a, kid, &sl, err);
    if (rc == 0 && sl->state != SG_JWT_KEY_PREPARED)
        rc = sg_err_set(err, SG_EINVAL,
                        "authority %s is the %s JWT authority: only the prepared authority can "
                        "be activated",
                        kid, sg_jwt_key_state_name(sl->state));
    if (rc == 0) {
        activate(a, sl);
        rc = save_state(a, err);
    }
    if (rc == 0)
        rc = fill_out(sl, out, err);
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}

int sg_jwt_authority_taint(sg_jwt_authority *a, const char *kid, int64_t now,
                           sg_jwt_authority_info *out, sg_err *err)
{
    slot *sl = NULL;
    int rc;

    pthread_mutex_lock(&a->rot_mu);
    rc = lookup(a, kid, &sl, err);
    if (rc == 0 && sl->state != SG_JWT_KEY_OLD)
        rc = sg_err_set(err, SG_EINVAL,
                        "authority %s is the %s JWT authority: only an old authority can be "
                        "tainted; prepare and activate a new one first",
                        kid, sg_jwt_key_state_name(sl->state));
    else if (rc == 0 && sl->tainted)
        rc = sg_err_set(err, SG_EEXIST, "JWT authority %s is already tainted", kid);
    if (rc == 0) {
        pthread_mutex_lock(&a->mu);
        sl->tainted = true;
        sl->tainted_at = now;
        a->gen++; /* agents learn of the taint with the next bundle */
        pthread_mutex_unlock(&a->mu);
        sg_log_warn("JWT authority kid=%s tainted: agents drop every JWT-SVID it signed", kid);
        rc = save_state(a, err);
    }
    if (rc == 0)
        rc = fill_out(sl, out, err);
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}

static void fmt_utc(int64_t t, char *out, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "%lld", (long long)t);
}

int sg_jwt_authority_revoke(sg_jwt_authority *a, const char *kid, int64_t now,
                            sg_jwt_authority_info *out, sg_err *err)
{
    slot *sl = NULL;
    int64_t until;
    int rc;

    pthread_mutex_lock(&a->rot_mu);
    rc = lookup(a, kid, &sl, err);
    if (rc == 0 && !sl->tainted) {
        rc = sg_err_set(err, SG_EINVAL,
                        "JWT authority %s is not tainted: only a tainted authority can be revoked",
                        kid);
    } else if (rc == 0) {
        until = live_until(a, sl, sl->tainted_at);
        if (now < until) {
            char when[32];
            fmt_utc(until, when, sizeof when);
            rc = sg_err_set(err, SG_EINVAL,
                            "JWT authority %s may still have live JWT-SVIDs until %s; revoke after "
                            "that",
                            kid, when);
        }
    }
    if (rc == 0)
        rc = fill_out(sl, out, err);
    if (rc == 0) {
        drop_slot(a, (size_t)(sl - a->slots));
        sg_log_warn("JWT authority kid=%s revoked: removed from the bundle", kid);
        rc = save_state(a, err);
    }
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}
