/*
 * JWT signing key slots (prepared, active, old) on the X.509 CA's rotation
 * schedule. Each key is a reference-counted object, so a signature in
 * flight keeps its key while rotation replaces the slot array. With
 * KeyManager "disk" every key lives in keys_dir as jwt-<kid>.key (0600)
 * and the slot states in jwt-slots.json (0600).
 */
#include "server/jwt_authority.h"
#include "server/slots.h"

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

/* One signing key; shared by its slot and signatures in flight. */
typedef struct jkey {
    atomic_int refs;
    EVP_PKEY *key;
    sg_jwt_alg alg;
    char kid[SG_JWT_KID_MAX + 1];
    sg_der spki;
    int64_t issued_at;
    int64_t expires_at;
    sg_slot_mark mark; /* latest exp of a token it signed; what jwt-slots.json promises */
} jkey;

/* A slot's object is its key. */
typedef sg_slot slot;
#define KEY(sl) ((jkey *)(sl)->obj)

struct sg_jwt_authority {
    pthread_mutex_t mu;     /* guards slots and gen */
    pthread_mutex_t rot_mu; /* serialises slot changes and the files in keys_dir */
    sg_slots slots;         /* oldest first; obj: jkey */
    uint64_t gen;
    char td[SG_TRUST_DOMAIN_MAX + 1];
    sg_key_type key_type;
    sg_jwt_alg alg;
    int64_t key_ttl_s, default_ttl_s;
    char *keys_dir;
    char *issuer;
};

/* ------------------------------------------------------------ keys */

static void jkey_unref(void *obj)
{
    jkey *k = obj;

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
    sg_slot_mark_init(&k->mark, 0);
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

/* ------------------------------------------------------------ slots */

_Static_assert(SG_JWT_KEY_PREPARED == (int)SG_SLOT_PREPARED &&
                   SG_JWT_KEY_ACTIVE == (int)SG_SLOT_ACTIVE && SG_JWT_KEY_OLD == (int)SG_SLOT_OLD,
               "sg_jwt_key_state mirrors sg_slot_state");

const char *sg_jwt_key_state_name(sg_jwt_key_state s)
{
    return sg_slot_state_name((sg_slot_state)s);
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

/* A slot holding k (taken). */
static slot slot_of(jkey *k, sg_slot_state st)
{
    slot sl = {.state = st,
               .not_before = k->issued_at,
               .not_after = k->expires_at,
               .mark = &k->mark,
               .obj = k};

    memcpy(sl.id, k->kid, sizeof k->kid);
    return sl;
}

static int slot_info(const slot *sl, void *info, sg_err *err)
{
    const jkey *k = KEY(sl);
    sg_jwt_authority_info *out = info;

    memset(out, 0, sizeof *out);
    memcpy(out->kid, k->kid, sizeof out->kid);
    out->state = (sg_jwt_key_state)sl->state;
    out->issued_at = k->issued_at;
    out->expires_at = k->expires_at;
    out->tainted = sl->tainted;
    out->tainted_at = sl->tainted_at;
    out->signed_until = atomic_load(&k->mark.signed_until);
    out->spki.data = malloc(k->spki.len ? k->spki.len : 1);
    if (out->spki.data == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    memcpy(out->spki.data, k->spki.data, k->spki.len);
    out->spki.len = k->spki.len;
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

/* How the JWT keys are named and kept: at the end of this file, after its hooks. */
static const sg_slots_kind JWT_SLOTS;

static int write_files(sg_slots *t, const sg_slot *sl, sg_err *err)
{
    char *kp = sg_slots_path(t, sl->id, "key");
    int rc =
        kp ? sg_key_write_file(kp, KEY(sl)->key, err) : sg_err_set(err, SG_ENOMEM, "out of memory");

    free(kp);
    return rc;
}

/* Loads one key of the state file into sl; unusable keys are dropped with a warning. */
static int load_entry(void *owner, const char *path, json_t *o, sg_slot *sl, int64_t mark,
                      int64_t now, sg_err *err)
{
    sg_jwt_authority *a = owner;
    slot want = *sl;
    const char *kid = want.id;
    char *kp;
    EVP_PKEY *key = NULL;
    jkey *k = NULL;
    sg_jwt_alg alg;
    sg_err e2;
    int rc;

    (void)path;
    if (want.not_after <= now) {
        sg_log_info("JWT authority kid=%s expired: dropping it", kid);
        return 0;
    }
    kp = sg_slots_path(&a->slots, kid, "key");
    if (kp == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory");
    if (access(kp, F_OK) != 0) {
        sg_log_warn("JWT authority kid=%s: %s is missing; dropping it", kid, kp);
        free(kp);
        return 0;
    }
    /* An unreadable or world-readable key file is an error, never silently replaced. */
    rc = sg_key_read_file(kp, &key, err);
    free(kp);
    if (rc < 0)
        return rc;
    sg_err_clear(&e2);
    if (sg_jwt_alg_for_key(key, &alg, &e2) < 0) {
        sg_log_warn("JWT authority kid=%s: %s; dropping it", kid, e2.msg);
        EVP_PKEY_free(key);
        return 0;
    }
    if (want.state != SG_SLOT_OLD && !sg_slot_key_is_type(key, a->key_type)) {
        /* Tokens it signed must still validate: keep publishing it, never sign with it. */
        sg_log_warn("JWT authority kid=%s differs from jwt_key_type %s: retiring it", kid,
                    sg_key_type_name(a->key_type));
        want.state = SG_SLOT_OLD;
    } else if (want.state != SG_SLOT_OLD) {
        alg = a->alg;
    }
    rc = jkey_new(key, alg, json_object_get(o, "issued_at") ? want.not_before : now, want.not_after,
                  &k, err);
    if (rc < 0)
        return rc;
    if (strcmp(k->kid, kid) != 0) {
        sg_log_warn("JWT authority kid=%s: its key has kid %s; dropping it", kid, k->kid);
        jkey_unref(k);
        return 0;
    }
    /* What it signed before the restart counts as signed (and promised). */
    sg_slot_mark_init(&k->mark, mark < 0 ? 0 : mark);
    atomic_store(&k->mark.signed_until, k->mark.prior_until);
    *sl = slot_of(k, want.state);
    sl->tainted = want.tainted;
    sl->tainted_at = want.tainted_at;
    return 1;
}

/* ------------------------------------------------------------ lifecycle */

int sg_jwt_authority_new(sg_jwt_authority **out, const sg_jwt_authority_options *opts, int64_t now,
                         sg_err *err)
{
    sg_jwt_authority *a;
    bool loaded = false, created = false;
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
    if ((opts->keys_dir != NULL && (a->keys_dir = strdup(opts->keys_dir)) == NULL) ||
        (opts->issuer != NULL && opts->issuer[0] != '\0' &&
         (a->issuer = strdup(opts->issuer)) == NULL)) {
        rc = sg_err_set(err, SG_ENOMEM, "out of memory creating the JWT authority");
        goto fail;
    }
    rc = sg_trust_domain_parse(opts->trust_domain, a->td, err);
    if (rc < 0)
        goto fail;
    a->slots = (sg_slots){.kind = &JWT_SLOTS,
                          .owner = a,
                          .mu = &a->mu,
                          .rot_mu = &a->rot_mu,
                          .gen = &a->gen,
                          .max_ttl = opts->max_svid_ttl_s,
                          .dir = a->keys_dir};
    rc = sg_slots_open(&a->slots, now, &loaded, err);
    if (rc == 0)
        rc = sg_slots_ensure_active(&a->slots, now, &created, err);
    if (created && loaded)
        a->gen++;
    if (rc == 0)
        rc = sg_slots_save(&a->slots, err);
    if (rc < 0)
        goto fail;
    *out = a;
    return 0;
fail:
    sg_jwt_authority_free(a);
    return rc;
}

void sg_jwt_authority_free(sg_jwt_authority *a)
{
    if (a == NULL)
        return;
    sg_slots_cleanup(&a->slots);
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
    int64_t exp;
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
    act = sg_slots_find_state(&a->slots, SG_SLOT_ACTIVE);
    if (act != NULL) {
        k = KEY(act);
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
    /* What a key signed must hold back its revoke after a restart too, so
     * the state file promises a bound before the token exists. */
    rc = sg_slots_reserve(&a->slots, &k->mark, now, ttl_s, exp, k->expires_at, err);
    if (rc < 0) {
        jkey_unref(k);
        return rc;
    }
    sg_jwt_claims c = {
        .sub = id.str, .aud = aud, .naud = naud, .iat = now, .exp = exp, .iss = a->issuer};
    rc = sg_jwt_sign(k->key, k->alg, k->kid, &c, &token, err);
    if (rc == 0) {
        sg_slot_mark_signed(&k->mark, exp);
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
    void *v = NULL;
    int rc = sg_slots_list(&a->slots, sizeof **out, NULL, &v, n, err);

    if (rc < 0)
        sg_jwt_authority_infos_free(v, *n);
    else
        *out = v;
    return rc;
}

void sg_jwt_authority_keys_free(sg_jwt_key *keys, size_t n)
{
    for (size_t i = 0; keys != NULL && i < n; i++) {
        free(keys[i].kid);
        sg_der_cleanup(&keys[i].spki);
    }
    free(keys);
}

/* A published key: kid, SPKI and expiry. mu held. */
static int key_report(const sg_slot *sl, void *out, sg_err *err)
{
    const jkey *k = KEY(sl);
    sg_jwt_key *v = out;

    v->kid = strdup(k->kid);
    v->spki.data = malloc(k->spki.len ? k->spki.len : 1);
    v->expires_at = k->expires_at;
    if (v->kid == NULL || v->spki.data == NULL)
        return sg_err_set(err, SG_ENOMEM, "out of memory listing JWT keys");
    memcpy(v->spki.data, k->spki.data, k->spki.len);
    v->spki.len = k->spki.len;
    return 0;
}

int sg_jwt_authority_keys(sg_jwt_authority *a, sg_jwt_key **keys, size_t *n, sg_err *err)
{
    void *v = NULL;
    int rc = sg_slots_list(&a->slots, sizeof **keys, key_report, &v, n, err);

    if (rc < 0)
        sg_jwt_authority_keys_free(v, *n);
    else
        *keys = v;
    return rc;
}

void sg_jwt_authority_kids_free(char **kids, size_t n)
{
    sg_slots_ids_free(kids, n);
}

int sg_jwt_authority_tainted(sg_jwt_authority *a, char ***kids, size_t *n, sg_err *err)
{
    return sg_slots_tainted_ids(&a->slots, kids, n, err);
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

/* Tokens never outlive their key, so a new key always outlives what the active one signed. */
static int make_next(void *owner, int64_t now, int64_t must_outlive, sg_slot *out, bool *changed,
                     sg_err *err)
{
    jkey *k = NULL;
    int rc = generate(owner, now, &k, err);

    (void)must_outlive;
    (void)changed;
    if (rc == 0)
        *out = slot_of(k, SG_SLOT_PREPARED);
    return rc < 0 ? rc : 1;
}

int sg_jwt_authority_rotate(sg_jwt_authority *a, int64_t now, bool *changed, sg_err *err)
{
    bool dirty = false, other = false;
    int rc;

    pthread_mutex_lock(&a->rot_mu);
    rc = sg_slots_rotate(&a->slots, a->key_ttl_s, now, &dirty, &other, err);
    if (rc == 0 && changed != NULL)
        *changed = dirty;
    if (rc == 0 && dirty)
        rc = sg_slots_save(&a->slots, err);
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}

int sg_jwt_authority_prepare(sg_jwt_authority *a, int64_t now, sg_jwt_authority_info *out,
                             sg_err *err)
{
    jkey *k = NULL;
    slot sl;
    int rc;

    /* Key generation (seconds for RSA-4096) runs before the lock: signing may wait on it. */
    rc = generate(a, now, &k, err);
    if (rc < 0)
        return rc;
    sl = slot_of(k, SG_SLOT_PREPARED);
    pthread_mutex_lock(&a->rot_mu);
    rc = sg_slots_prepare(&a->slots, &sl, out, err);
    pthread_mutex_unlock(&a->rot_mu);
    return rc;
}

int sg_jwt_authority_activate(sg_jwt_authority *a, const char *kid, int64_t now,
                              sg_jwt_authority_info *out, sg_err *err)
{
    return sg_slots_act(&a->slots, SG_SLOTS_ACTIVATE, kid, now, out, err);
}

/* Only an old key can be tainted. */
int sg_jwt_authority_taint(sg_jwt_authority *a, const char *kid, int64_t now,
                           sg_jwt_authority_info *out, sg_err *err)
{
    return sg_slots_act(&a->slots, SG_SLOTS_TAINT, kid, now, out, err);
}

/* Only a tainted key, and only once no token it signed can still be live. */
int sg_jwt_authority_revoke(sg_jwt_authority *a, const char *kid, int64_t now,
                            sg_jwt_authority_info *out, sg_err *err)
{
    return sg_slots_act(&a->slots, SG_SLOTS_REVOKE, kid, now, out, err);
}

static const sg_slots_kind JWT_SLOTS = {
    .noun = "JWT authority",
    .name = "JWT authority",
    .log_noun = "JWT authority kid=",
    .plural = "JWT authorities",
    .svids = "JWT-SVIDs",
    .on_taint = "agents drop every JWT-SVID it signed",
    .id_hint = "the key ID (kid) of a JWT authority, up to 32 base64url characters",
    .id_quote = 64,
    .id_ok = kid_ok,
    .release = jkey_unref,
    .commit = sg_slots_save,
    .report = slot_info,
    .make = make_next,
    .write_files = write_files,
    .load = load_entry,
    .gen_on_change = true,
    .file = "jwt-slots.json",
    .file_prefix = "jwt-",
    .file_noun = "JWT authority state file",
    .file_remedy = "fix it or remove it to start with a new key",
    .array_key = "keys",
    .array_desc = "a \"keys\" array",
    .gen_key = "generation",
    .item = "key",
    .id_key = "kid",
    .id_quote_file = 40,
    .has_expiry = true,
    .bad_tail = " or times",
};
