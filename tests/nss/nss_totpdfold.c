/*
 * libnss_totpdfold.so.2 — a test NSS module that resolves several spellings of a
 * name to one account, as SSSD/LDAP with case_sensitive = false or winbind do:
 * "TVICTIM", "Tvictim", "tvictim@EXAMPLE" and "EXAMPLE\tvictim" all give the
 * /etc/passwd (and /etc/shadow) entry of "tvictim", whose pw_name is the
 * canonical spelling. Anything else is NSS_STATUS_NOTFOUND.
 *
 * Only for tests in a private mount namespace: tests/e2e/test_one_identity.py
 * builds it (cc -shared -fPIC -Wall -Wextra -Werror) and hands its directory to
 * tests/e2e/nsrun.py (`nss`), which binds an nsswitch.conf ("passwd: files
 * totpdfold", "shadow: files totpdfold") and an ld.so.cache that lists the
 * directory over the namespace's /etc. It reads whatever /etc/passwd and
 * /etc/shadow the namespace shows; after "files", it is asked only for names
 * files does not know.
 */

#include <ctype.h>
#include <errno.h>
#include <nss.h>
#include <pwd.h>
#include <shadow.h>
#include <stdio.h>
#include <string.h>

#define MAX_NAME 256

/* The canonical spelling: after a "DOMAIN\" prefix, before an "@REALM" suffix,
 * in lower case. False if nothing is left or the name is too long. */
static int fold(const char *name, char *out)
{
    const char *start = strrchr(name, '\\');
    const char *end;
    size_t len;

    start = start ? start + 1 : name;
    end = strchr(start, '@');
    len = end ? (size_t)(end - start) : strlen(start);
    if (len == 0 || len >= MAX_NAME)
        return 0;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)start[i]);
    out[len] = '\0';
    return 1;
}

/* fgetpwent_r/fgetspent_r return ERANGE when buf is too small: the caller must
 * retry with a bigger one, so say TRYAGAIN with *errnop = ERANGE. */
static enum nss_status failed(int err, int *errnop)
{
    if (err == ERANGE) {
        *errnop = ERANGE;
        return NSS_STATUS_TRYAGAIN;
    }
    if (err == ENOENT)
        return NSS_STATUS_NOTFOUND;
    *errnop = err;
    return NSS_STATUS_UNAVAIL;
}

/* Read the next entry of the file into *entry; 0 and its name, or an errno
 * (ENOENT at the end, ERANGE if buf is too small for it). */
typedef int next_entry(FILE *file, void *entry, char *buf, size_t buflen, const char **name);

static int next_passwd(FILE *file, void *entry, char *buf, size_t buflen, const char **name)
{
    struct passwd *found = NULL;
    int err = fgetpwent_r(file, entry, buf, buflen, &found);

    if (err == 0)
        *name = found->pw_name;
    return err;
}

static int next_shadow(FILE *file, void *entry, char *buf, size_t buflen, const char **name)
{
    struct spwd *found = NULL;
    int err = fgetspent_r(file, entry, buf, buflen, &found);

    if (err == 0)
        *name = found->sp_namp;
    return err;
}

/* The entry of `path` whose name is the folded `name`. */
static enum nss_status lookup(const char *path, next_entry *next, const char *name, void *entry,
                              char *buf, size_t buflen, int *errnop)
{
    char want[MAX_NAME];
    const char *found = NULL;
    FILE *file;
    int err;

    if (!fold(name, want))
        return NSS_STATUS_NOTFOUND;
    file = fopen(path, "re");
    if (file == NULL)
        return failed(errno, errnop);
    while ((err = next(file, entry, buf, buflen, &found)) == 0 && strcmp(found, want) != 0)
        ;
    fclose(file);
    return err == 0 ? NSS_STATUS_SUCCESS : failed(err, errnop);
}

enum nss_status _nss_totpdfold_getpwnam_r(const char *name, struct passwd *pwd, char *buf,
                                          size_t buflen, int *errnop)
{
    return lookup("/etc/passwd", next_passwd, name, pwd, buf, buflen, errnop);
}

enum nss_status _nss_totpdfold_getspnam_r(const char *name, struct spwd *spw, char *buf,
                                          size_t buflen, int *errnop)
{
    return lookup("/etc/shadow", next_shadow, name, spw, buf, buflen, errnop);
}
