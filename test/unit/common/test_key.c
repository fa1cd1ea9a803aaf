/*
 * Unit tests for common/key.c: key types, generation, encodings and key files.
 */
#include "common/key.h"

#include "test/runner.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

static char *path_in(const char *dir, const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

TEST(key_type_parse_names)
{
    sg_key_type t;
    sg_err err;

    ASSERT_OK(sg_key_type_parse("ec-p256", &t, &err));
    ASSERT_EQ(t, SG_KEY_EC_P256);
    ASSERT_OK(sg_key_type_parse("ec-p384", &t, &err));
    ASSERT_EQ(t, SG_KEY_EC_P384);
    ASSERT_OK(sg_key_type_parse("rsa-2048", &t, &err));
    ASSERT_EQ(t, SG_KEY_RSA_2048);
    ASSERT_OK(sg_key_type_parse("rsa-4096", &t, &err));
    ASSERT_EQ(t, SG_KEY_RSA_4096);
    ASSERT_STREQ(sg_key_type_name(SG_KEY_EC_P384), "ec-p384");
    ASSERT_EQ(sg_key_type_parse("ec-p521", &t, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "ec-p521") != NULL);
    ASSERT_EQ(sg_key_type_parse(NULL, &t, NULL), SG_EINVAL);
}

TEST(key_generate_types)
{
    EVP_PKEY *k = NULL;
    sg_err err;

    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &k, &err));
    ASSERT(EVP_PKEY_is_a(k, "EC"));
    ASSERT_EQ(EVP_PKEY_get_bits(k), 256);
    EVP_PKEY_free(k);
    ASSERT_OK(sg_key_generate(SG_KEY_EC_P384, &k, &err));
    ASSERT_EQ(EVP_PKEY_get_bits(k), 384);
    EVP_PKEY_free(k);
    ASSERT_OK(sg_key_generate(SG_KEY_RSA_2048, &k, &err));
    ASSERT(EVP_PKEY_is_a(k, "RSA"));
    ASSERT_EQ(EVP_PKEY_get_bits(k), 2048);
    EVP_PKEY_free(k);
    ASSERT_EQ(sg_key_generate((sg_key_type)99, &k, &err), SG_EINVAL);
}

TEST(key_pkcs8_and_spki_round_trip)
{
    EVP_PKEY *k = NULL, *k2, *pub;
    uint8_t *der = NULL;
    const unsigned char *p;
    size_t len = 0;
    sg_err err;

    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &k, &err));
    ASSERT_OK(sg_key_to_pkcs8_der(k, &der, &len, &err));
    p = der;
    k2 = d2i_AutoPrivateKey(NULL, &p, (long)len);
    ASSERT(k2 != NULL);
    ASSERT_EQ(EVP_PKEY_eq(k, k2), 1);
    OPENSSL_clear_free(der, len);
    EVP_PKEY_free(k2);

    ASSERT_OK(sg_key_to_spki_der(k, &der, &len, &err));
    p = der;
    pub = d2i_PUBKEY(NULL, &p, (long)len);
    ASSERT(pub != NULL);
    ASSERT_EQ(EVP_PKEY_eq(k, pub), 1);
    OPENSSL_free(der);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(k);
}

TEST(key_pem_round_trip)
{
    EVP_PKEY *k = NULL, *k2;
    char *pem = NULL;
    BIO *b;
    sg_err err;

    ASSERT_OK(sg_key_generate(SG_KEY_EC_P384, &k, &err));
    ASSERT_OK(sg_key_to_pem(k, &pem, &err));
    ASSERT(strncmp(pem, "-----BEGIN PRIVATE KEY-----", 27) == 0);
    b = BIO_new_mem_buf(pem, -1);
    k2 = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    ASSERT(k2 != NULL);
    ASSERT_EQ(EVP_PKEY_eq(k, k2), 1);
    BIO_free(b);
    sg_key_pem_free(pem);
    sg_key_pem_free(NULL);
    EVP_PKEY_free(k);
    EVP_PKEY_free(k2);
}

TEST(key_file_written_0600_and_read_back)
{
    const char *dir = sg_test_tmpdir();
    char *path = path_in(dir, "k.pem");
    EVP_PKEY *k = NULL, *k2 = NULL;
    struct stat st;
    sg_err err;

    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &k, &err));
    ASSERT_OK(sg_key_write_file(path, k, &err));
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);
    ASSERT_OK(sg_key_read_file(path, &k2, &err));
    ASSERT_EQ(EVP_PKEY_eq(k, k2), 1);
    EVP_PKEY_free(k2);
    /* Overwrite keeps 0600. */
    ASSERT_OK(sg_key_write_file(path, k, &err));
    ASSERT_OK(stat(path, &st));
    ASSERT_EQ(st.st_mode & 0777, 0600);
    EVP_PKEY_free(k);
}

TEST(key_file_group_readable_refused)
{
    const char *dir = sg_test_tmpdir();
    char *path = path_in(dir, "k.pem");
    EVP_PKEY *k = NULL, *k2 = NULL;
    sg_err err;

    ASSERT_OK(sg_key_generate(SG_KEY_EC_P256, &k, &err));
    ASSERT_OK(sg_key_write_file(path, k, &err));
    ASSERT_OK(chmod(path, 0644));
    ASSERT_EQ(sg_key_read_file(path, &k2, &err), SG_EPERM);
    ASSERT(k2 == NULL);
    ASSERT(strstr(err.msg, path) != NULL);
    ASSERT(strstr(err.msg, "0644") != NULL);
    /* The operator-file variant accepts it. */
    ASSERT_OK(sg_key_read_file_any_mode(path, &k2, &err));
    ASSERT_EQ(EVP_PKEY_eq(k, k2), 1);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(k);
}

TEST(key_file_missing_and_garbage)
{
    const char *dir = sg_test_tmpdir();
    char *path = path_in(dir, "nope.pem");
    EVP_PKEY *k = NULL;
    FILE *f;
    sg_err err;

    ASSERT_EQ(sg_key_read_file(path, &k, &err), SG_ENOENT);
    ASSERT(strstr(err.msg, "nope.pem") != NULL);
    path = path_in(dir, "garbage.pem");
    f = fopen(path, "w");
    fputs("-----BEGIN PRIVATE KEY-----\nnot base64 at all!!\n-----END PRIVATE KEY-----\n", f);
    fclose(f);
    ASSERT_OK(chmod(path, 0600));
    ASSERT_EQ(sg_key_read_file(path, &k, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "garbage.pem") != NULL);
    ASSERT(k == NULL);
    ASSERT_EQ(sg_key_read_file(dir, &k, &err), SG_EINVAL); /* a directory */
}

TEST(key_file_sec1_and_pkcs1_read)
{
    const char *dir = sg_test_tmpdir();
    const char *types[2] = {"EC", "RSA"};
    const char *want[2] = {"-----BEGIN EC PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----"};
    char line[64];

    for (int i = 0; i < 2; i++) {
        char *path = path_in(dir, types[i]);
        EVP_PKEY *k = i == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384")
                             : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
        EVP_PKEY *k2 = NULL;
        BIO *b = BIO_new_file(path, "w");
        FILE *f;
        sg_err err;

        ASSERT(k != NULL && b != NULL);
        ASSERT(PEM_write_bio_PrivateKey_traditional(b, k, NULL, NULL, 0, NULL, NULL) == 1);
        BIO_free(b);
        ASSERT_OK(chmod(path, 0600));
        f = fopen(path, "r");
        ASSERT(fgets(line, sizeof line, f) != NULL);
        fclose(f);
        ASSERT(strncmp(line, want[i], strlen(want[i])) == 0);
        ASSERT_OK(sg_key_read_file(path, &k2, &err));
        ASSERT_EQ(EVP_PKEY_eq(k, k2), 1);
        EVP_PKEY_free(k);
        EVP_PKEY_free(k2);
    }
}
