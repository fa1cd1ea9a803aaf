/* Unit tests for common/hcl.c. */
#include "common/hcl.h"
#include "test/runner.h"

static sg_hcl_node *parse_ok(const char *text)
{
    sg_hcl_node *root = NULL;
    sg_err err;

    sg_err_clear(&err);
    if (sg_hcl_parse("t.conf", text, strlen(text), &root, &err) != 0) {
        fprintf(stderr, "  parse failed: %s\n", err.msg);
        exit(1);
    }
    return root;
}

/* Parses text expecting failure; checks the message contains want. */
static void parse_bad(const char *text, const char *want)
{
    sg_hcl_node *root = NULL;
    sg_err err;

    sg_err_clear(&err);
    if (sg_hcl_parse("t.conf", text, strlen(text), &root, &err) == 0) {
        fprintf(stderr, "  accepted: %s\n", text);
        exit(1);
    }
    ASSERT(root == NULL);
    if (strstr(err.msg, want) == NULL) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n", err.msg, want);
        exit(1);
    }
}

TEST(hcl_scalars_and_comments)
{
    sg_hcl_node *r = parse_ok("# hash comment\n"
                              "// slash comment\n"
                              "/* block\n comment */ a = \"x\"\n"
                              "b = 42\n"
                              "c = -7 d = 1.5e3\n"
                              "e = true\n"
                              "f = false, g = \"q\\\"\\\\\\n\\t\\u00e9\\U0001F600\"\n");

    ASSERT_EQ(r->type, SG_HCL_OBJECT);
    ASSERT_EQ(r->n, 7);
    ASSERT_STREQ(r->items[0]->key, "a");
    ASSERT_STREQ(r->items[0]->str, "x");
    ASSERT_EQ(r->items[0]->line, 4);
    ASSERT_EQ(r->items[1]->type, SG_HCL_NUMBER);
    ASSERT(r->items[1]->is_int);
    ASSERT_EQ(r->items[1]->ival, 42);
    ASSERT_EQ(r->items[1]->line, 5);
    ASSERT_EQ(r->items[2]->ival, -7);
    ASSERT(!r->items[3]->is_int);
    ASSERT_STREQ(r->items[3]->str, "1.5e3");
    ASSERT_EQ(r->items[4]->type, SG_HCL_BOOL);
    ASSERT(r->items[4]->bval);
    ASSERT(!r->items[5]->bval);
    ASSERT_STREQ(r->items[6]->str, "q\"\\\n\t\xc3\xa9\xf0\x9f\x98\x80");
    sg_hcl_free(r);
}

TEST(hcl_lists_with_trailing_comma)
{
    sg_hcl_node *r = parse_ok("l = [\"a\", \"b\",]\nm = []\nn = [1, [2], {x = 1}]\n");

    ASSERT_EQ(r->items[0]->type, SG_HCL_LIST);
    ASSERT_EQ(r->items[0]->n, 2);
    ASSERT_STREQ(r->items[0]->items[1]->str, "b");
    ASSERT(r->items[0]->items[1]->key == NULL);
    ASSERT_EQ(r->items[1]->n, 0);
    ASSERT_EQ(r->items[2]->n, 3);
    ASSERT_EQ(r->items[2]->items[2]->type, SG_HCL_OBJECT);
    sg_hcl_free(r);
}

TEST(hcl_blocks_with_labels)
{
    sg_hcl_node *r = parse_ok("plugins {\n"
                              "  DataStore \"sql\" {\n"
                              "    plugin_data {\n"
                              "      database_type = \"sqlite3\"\n"
                              "    }\n"
                              "  }\n"
                              "  KeyManager \"memory\" {\n"
                              "    plugin_data = {}\n"
                              "  }\n"
                              "  multi \"a\" \"b\" {}\n"
                              "}\n");
    sg_hcl_node *p = r->items[0];

    ASSERT_STREQ(p->key, "plugins");
    ASSERT_EQ(p->nlabels, 0);
    ASSERT_EQ(p->n, 3);
    ASSERT_STREQ(p->items[0]->key, "DataStore");
    ASSERT_EQ(p->items[0]->nlabels, 1);
    ASSERT_STREQ(p->items[0]->labels[0], "sql");
    ASSERT_EQ(p->items[0]->line, 2);
    ASSERT_STREQ(p->items[0]->items[0]->items[0]->str, "sqlite3");
    ASSERT_EQ(p->items[0]->items[0]->items[0]->line, 4);
    ASSERT_EQ(p->items[1]->items[0]->type, SG_HCL_OBJECT);
    ASSERT_EQ(p->items[1]->items[0]->n, 0);
    ASSERT_EQ(p->items[1]->items[0]->line, 8);
    ASSERT_EQ(p->items[2]->nlabels, 2);
    ASSERT_STREQ(p->items[2]->labels[1], "b");
    sg_hcl_free(r);
}

TEST(hcl_duplicate_keys_kept_in_order)
{
    sg_hcl_node *r = parse_ok("a = 1\nb = 2\na = 3\n");

    ASSERT_EQ(r->n, 3);
    ASSERT_STREQ(r->items[2]->key, "a");
    ASSERT_EQ(r->items[2]->ival, 3);
    sg_hcl_free(r);
}

TEST(hcl_quoted_keys_and_empty_input)
{
    sg_hcl_node *r = parse_ok("\"quoted key\" = \"v\"\n");

    ASSERT_STREQ(r->items[0]->key, "quoted key");
    sg_hcl_free(r);
    r = parse_ok("");
    ASSERT_EQ(r->n, 0);
    sg_hcl_free(r);
    r = parse_ok("  # only a comment");
    ASSERT_EQ(r->n, 0);
    sg_hcl_free(r);
}

/*
 * SPIRE's own *_full.conf references are not part of the repository: parsed
 * from $SIGIL_SPIRE_QUICKSTART (a SPIRE quickstart conf/ directory) or the
 * shared reference copy, and skipped when neither is on this machine.
 */
TEST(hcl_parses_spire_full_confs)
{
    static const char *names[] = {"server/server_full.conf", "agent/agent_full.conf"};
    static char buf[1 << 20];
    const char *dir = getenv("SIGIL_SPIRE_QUICKSTART");

    if (dir == NULL || dir[0] == '\0')
        dir = "/work/shared/reference/spire-quickstart/conf";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[1024];
        FILE *f;
        sg_hcl_node *r;
        size_t n;

        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        f = fopen(path, "r");
        if (f == NULL) {
            fprintf(stderr, "  skipped: %s not present\n", path);
            continue;
        }
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        r = parse_ok(buf);
        ASSERT(r->n >= 2);
        sg_hcl_free(r);
    }
}

TEST(hcl_errors_name_file_and_line)
{
    parse_bad("a = 1\nb 2\n", "t.conf:2: expected '=' or '{' after key \"b\"");
    parse_bad("a = \"x\n\"", "t.conf:1: unterminated string");
    parse_bad("a = \"x", "t.conf:1: unterminated string");
    parse_bad("a {\n b = 1\n", "missing '}' for the '{' on line 1");
    parse_bad("a = [1, 2\n", "t.conf:2: expected");
    parse_bad("a = [1 2]", "',' or ']'");
    parse_bad("\n\n/* open", "t.conf:3: unterminated /* comment");
    parse_bad("a = bare", "t.conf:1: unexpected identifier \"bare\"");
    parse_bad("a = 90s", "malformed number \"90s\"");
    parse_bad("a = \"\\q\"", "unknown escape");
    parse_bad("a = \"\\u12\"", "malformed \\u escape");
    parse_bad("a = \"\\u0000\"", "not an allowed character");
    parse_bad("a = \"\\ud800\"", "not an allowed character");
    parse_bad("}", "t.conf:1: expected a key");
    parse_bad("a = ", "expected a value, found end of file");
    parse_bad("a = <<EOF\nx\nEOF\n", "heredoc");
    parse_bad("a \"l\" = {}", "'{' after block labels");
    parse_bad("a = 1.", "malformed number");
    parse_bad("a = 1e", "exponent");
    parse_bad("a = @", "unexpected character '@'");
    parse_bad("a = \x01", "unexpected byte 0x01");
    parse_bad("a = {b = 1 c}", "after key \"c\"");
}

TEST(hcl_rejects_nul_bytes)
{
    const char text[] = "a = 1\nb = \0\n";
    sg_hcl_node *r = NULL;
    sg_err err;

    ASSERT_EQ(sg_hcl_parse("t.conf", text, sizeof text - 1, &r, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "t.conf:2: NUL byte") != NULL);
}

TEST(hcl_limits_depth)
{
    char buf[4096];
    size_t o = 0;
    sg_hcl_node *r = NULL;
    sg_err err;

    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "a{");
    ASSERT_EQ(sg_hcl_parse("t.conf", buf, o, &r, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "nesting deeper") != NULL);
    o = 0;
    o += (size_t)snprintf(buf, sizeof buf, "a = ");
    for (int i = 0; i < 1000; i++)
        buf[o++] = '[';
    ASSERT_EQ(sg_hcl_parse("t.conf", buf, o, &r, &err), SG_EINVAL);
    ASSERT(strstr(err.msg, "nesting deeper") != NULL);
}

TEST(hcl_limits_size)
{
    size_t len = SG_HCL_MAX_INPUT + 1;
    char *big = malloc(len);
    sg_hcl_node *r = NULL;
    sg_err err;

    ASSERT(big != NULL);
    memset(big, ' ', len);
    ASSERT_EQ(sg_hcl_parse("t.conf", big, len, &r, &err), SG_ETOOBIG);
    free(big);
}

TEST(hcl_big_integers_are_not_int)
{
    sg_hcl_node *r = parse_ok("a = 9223372036854775807\nb = 9223372036854775808\n"
                              "c = -9223372036854775808\n");

    ASSERT(r->items[0]->is_int);
    ASSERT(r->items[0]->ival == INT64_MAX);
    ASSERT(!r->items[1]->is_int);
    ASSERT(r->items[2]->is_int);
    ASSERT(r->items[2]->ival == INT64_MIN);
    ASSERT_STREQ(sg_hcl_type_name(SG_HCL_LIST), "list");
    sg_hcl_free(r);
}
