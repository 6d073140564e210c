/* The relay's per-copy fan-out, out of the interpreter (voipclient/server/fanout.py loads it
 * with ctypes; `make` builds it with the C compiler the install already needs).
 *
 * One call per forwarded datagram queues every copy into the sendmmsg batch that
 * voipclient/server/mmsg.py lays out (the arena: message headers, iovecs, MAC slots, names,
 * bodies): it copies the datagram into the batch once and, per listener, computes the s2c hop
 * MAC, HMAC-SHA256(K_s2c, body) (PROTOCOL section 3), into the copy's MAC slot and stores the
 * listener's sockaddr and the body's iovec. The SHA-256 is OpenSSL's, the libcrypto Python
 * itself links (function pointers handed over from Python), resumed from each listener's
 * keyed inner and outer states, which are computed once per session. No allocation, no lock,
 * no system call: the flush (one sendmmsg) stays in Python.
 *
 * The C here depends on libc's headers only. Everything it is given is checked by the caller;
 * what it checks itself is that the batch has room.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* OpenSSL's SHA256_CTX (openssl/sha.h; unchanged since 0.9.8). The loader checks the layout by
 * comparing HMACs computed here with the `cryptography` package's before it uses this code. */
typedef struct {
    uint32_t h[8];
    uint32_t nl, nh;
    uint32_t data[16];
    uint32_t num, md_len;
} sha256_state;

typedef int (*sha256_update_fn)(sha256_state *, const void *, size_t);
typedef int (*sha256_final_fn)(unsigned char *, sha256_state *);

/* The context the SHA-256 functions work on: larger than the 112-byte state that is copied in,
 * so that a libcrypto with a larger SHA256_CTX could not write past it (the loader's self-test
 * would then refuse the library). mmsg.py's _SCRATCH is the same. */
#define VC_SCRATCH 256

/* Each listener's keying in a plan: the SHA-256 state after (K xor ipad), then after
 * (K xor opad). */
#define VC_KEY_STATE (2 * sizeof(sha256_state))

/* The batch's bookkeeping, at the start of its arena as uint64 words (mmsg.py reads and resets
 * n and cur; the rest is written once). Offsets are from base, in bytes, except o_iov. */
struct vc_batch {
    uint64_t n;        /* messages queued */
    uint64_t cur;      /* offset of the next body */
    uint64_t max;      /* message slots */
    uint64_t body_end; /* end of the body area */
    uint64_t base;     /* the arena's address */
    uint64_t o_iov;    /* index (uint64 words) of iov[0].iov_base; message s: + 4s */
    uint64_t o_mac;    /* MAC slot s at o_mac + 32s */
    uint64_t o_name;   /* name s at o_name + namelen * s */
    uint64_t namelen;  /* 16 (sockaddr_in) or 28 (sockaddr_in6) */
    uint64_t update;   /* SHA256_Update */
    uint64_t final;    /* SHA256_Final */
};

size_t vc_key_state_size(void) { return VC_KEY_STATE; }
size_t vc_batch_size(void) { return sizeof(struct vc_batch); }

/* Queue data[0:body_len] (a datagram's body: each copy is the body and its first 10 MAC
 * bytes) for every listener of plan (plan_len bytes: their key states, then their names of
 * b->namelen bytes). Returns the copies queued, -1 when the batch has no room for them (the
 * caller flushes and calls again), -2 for lengths that do not fit (nothing is read then).
 * The arguments are C ints: ctypes passes Python ints and bytes without conversion functions
 * that way (0.3 us a call against 1.8 us with argtypes). */
long vc_add(struct vc_batch *b, const unsigned char *data, int data_len, int body_len_,
            const unsigned char *plan, int plan_len)
{
    size_t entry = VC_KEY_STATE + (size_t)b->namelen;
    if (body_len_ < 0 || body_len_ > data_len || plan_len < 0 || (size_t)plan_len % entry)
        return -2;
    size_t body_len = (size_t)body_len_, m = (size_t)plan_len / entry, nd = body_len;
    if (b->n + m > b->max || b->cur + nd > b->body_end)
        return -1;
    unsigned char *base = (unsigned char *)(uintptr_t)b->base;
    unsigned char *body = base + b->cur;
    sha256_update_fn update = (sha256_update_fn)(uintptr_t)b->update;
    sha256_final_fn final = (sha256_final_fn)(uintptr_t)b->final;
    const unsigned char *names = plan + m * VC_KEY_STATE;
    size_t namelen = (size_t)b->namelen;
    uint64_t *iov = (uint64_t *)base + b->o_iov + 4 * b->n;
    unsigned char *mac = base + b->o_mac + 32 * b->n;
    unsigned char *name = base + b->o_name + namelen * b->n;
    union {
        sha256_state s;
        unsigned char pad[VC_SCRATCH];
    } ctx;
    unsigned char inner[32];

    memcpy(body, data, nd);
    for (size_t j = 0; j < m; j++) {
        const unsigned char *key = plan + j * VC_KEY_STATE;
        memcpy(&ctx.s, key, sizeof ctx.s);
        update(&ctx.s, body, body_len);
        final(inner, &ctx.s);
        memcpy(&ctx.s, key + sizeof ctx.s, sizeof ctx.s);
        update(&ctx.s, inner, sizeof inner);
        final(mac, &ctx.s);
        memcpy(name, names + j * namelen, namelen);
        iov[0] = (uint64_t)(uintptr_t)body;
        iov[1] = body_len;
        iov += 4;
        mac += 32;
        name += namelen;
    }
    b->n += m;
    b->cur += nd;
    return (long)m;
}
