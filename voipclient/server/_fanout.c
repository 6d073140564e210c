/* The relay's per-copy fan-out and its voice checks, out of the interpreter
 * (voipclient/server/mmsg.py loads it with ctypes; `make` builds it with the C compiler the
 * install already needs). The fan-out comes first, the voice path (vc_voice) after it.
 *
 * One call per forwarded datagram queues every copy into the sendmmsg batch that
 * voipclient/server/mmsg.py lays out (the arena: message headers, iovecs, MAC slots, names,
 * bodies): it copies the datagram into the batch once and, per listener, computes the s2c hop
 * MAC, HMAC-SHA256(K_s2c, body) (PROTOCOL section 3), into the copy's MAC slot and stores the
 * listener's sockaddr and the body's iovec. The SHA-256 is OpenSSL's, the libcrypto Python
 * itself links (function pointers handed over from Python), resumed from each listener's
 * keyed inner and outer states, which are computed once per session. vc_add makes no
 * allocation, takes no lock and makes no system call. vc_flush sends the batch (sendmmsg,
 * through the pointer mmsg.py hands over: libc's, or a test's fake). The voice path allocates
 * only when a session first speaks in a channel (its replay windows) and when relay.py installs
 * a session or a route; vc_drain's system calls are recvmmsg and, at the end of a wake-up, the
 * flush.
 *
 * The C here depends on libc's headers only. It checks every length it is given before it
 * reads or writes.
 */
#define _GNU_SOURCE /* recvmmsg */
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

/* The batch's bookkeeping, as uint64 words (mmsg.py's NativeSendMmsg._st; vc_flush resets n and
 * cur and counts; the rest is written once). Offsets are from base, in bytes, except o_iov; the
 * message headers (struct mmsghdr) are at base. */
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
    uint64_t o_body;   /* the body area's start */
    uint64_t send;     /* sendmmsg (libc's, or a test's fake that sets errno as libc does) */
    uint64_t sent, dropped, errors, calls; /* vc_flush's counts, as SendMmsg.flush keeps them */
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

/* ---- The relay's voice path (relay.py's RelayCore with native=...) -------------------------
 *
 * The checks of PROTOCOL section 3 "Relay, per datagram" for voice, and their state, in C:
 * length, version, ptype, session, c2s hop MAC, validated address, the speak right (a route
 * that relay.py installs per (channel, speaker) and roster version), the replay window per
 * (sender, channel, gen) with the newest VC_KEPT_GENS generations kept, size and the session's
 * token bucket; then the fan-out above. relay.py stays the owner of everything else: sessions
 * come and go, addresses are validated and routes are built there, and it handles what C
 * hands back (hop control, a missing route, a full batch). Python's RelayCore is the
 * reference: the unit tests run every relay test against both.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef int (*vc_sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);

/* Send every queued copy with sendmmsg, as SendMmsg.flush does in Python. sendmmsg returns how
 * many messages went out; when message k fails after others went out it returns k and the
 * error is lost, so the loop calls again from k and then gets k's error. EAGAIN/ENOBUFS drop
 * the rest of the batch (voice is never queued); EINTR retries; any other error skips that one
 * message. Returns the messages this call sent. */
long vc_flush(struct vc_batch *b, int fd)
{
    uint64_t total = b->n, done = 0, before = b->sent;
    b->n = 0;
    b->cur = b->o_body;
    vc_sendmmsg_fn send = (vc_sendmmsg_fn)(uintptr_t)b->send;
    struct mmsghdr *h = (struct mmsghdr *)(uintptr_t)b->base;
    while (done < total) {
        b->calls++;
        int n = send(fd, h + done, (unsigned)(total - done), MSG_DONTWAIT);
        if (n > 0) {
            done += (uint64_t)n;
            b->sent += (uint64_t)n;
            continue;
        }
        int e = errno;
        if (n < 0 && e == EINTR)
            continue;
        if (n == 0 || e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
            b->dropped += total - done;
            break;
        }
        b->errors++;
        done++;
    }
    return (long)(b->sent - before);
}

#define VC_KEPT_GENS 2  /* relay.KEPT_GENERATIONS */
#define VC_WINDOW 128   /* crypto.replay.DEFAULT_WINDOW */
#define VC_MIN_LEN 46   /* crypto.media.MIN_DATAGRAM_LEN */
#define VC_MAX_LEN 1200 /* crypto.media.MAX_DATAGRAM_LEN */
#define VC_HOP_MAC 10

/* relay.RelayDrop, and the counters after them (relay.py reads them by these indexes) */
enum {
    D_BAD_LENGTH = 0, D_UNKNOWN_VERSION = 1, D_UNKNOWN_PTYPE = 2, D_UNKNOWN_SESSION = 3,
    D_BAD_HOP_MAC = 4, D_UNVALIDATED_ADDRESS = 5, D_REPLAY = 7, D_RATE_LIMIT = 8,
    D_OLD_GENERATION = 10, D_OVERSIZE = 11, D_SENDER_MISMATCH = 14,
    C_PACKETS_IN = 16, C_BYTES_IN, C_PACKETS_OUT, C_BYTES_OUT, C_FORWARDED, C_COPIES_UDP,
    VC_NCOUNTERS
};

/* What vc_voice returns besides a count of copies (>= 0). */
#define VC_DROPPED (-1) /* dropped and counted */
#define VC_HOP (-2)     /* MAC-valid hop control: relay.py answers it */
#define VC_ROUTE (-3)   /* no route for (channel, sender): relay.py installs one, then vc_resume */
#define VC_FULL (-4)    /* the batch has no room: flush, then vc_resume */
#define VC_BIG (-5)     /* passed; more copies than a batch holds: relay.py queues them */
#define VC_SELF (-6)    /* passed; no batch given: relay.py makes the copies */
#define VC_BAD (-7)     /* lengths that do not fit (a caller's bug); nothing read */
#define VC_EXTRAS (1L << 24) /* added to a count: the route has listeners off UDP too */

struct vc_gen { uint32_t gen, pad; int64_t top; uint64_t mask[VC_WINDOW / 64]; };
struct vc_chan { uint32_t channel, ngens; struct vc_gen gens[VC_KEPT_GENS]; };

struct vc_sess {
    uint32_t id, addrlen; /* addrlen 0: no validated address */
    unsigned char addr[28];
    unsigned char c2s[VC_KEY_STATE];
    double tokens, tokens_last;
    uint64_t received;
    uint32_t nchan, capchan;
    struct vc_chan *chans;
};

struct vc_route {
    uint32_t channel, sender, used, extras;
    unsigned char *plan; /* its own copy: key states, then names */
    size_t plan_len;
};

struct vc_relay {
    struct vc_sess **sess;
    size_t sess_cap, sess_n;
    struct vc_route *routes;
    size_t route_cap, route_n;
    double rate, burst, now;
    size_t max_datagram, namelen;
    sha256_update_fn update;
    sha256_final_fn final;
    uint64_t counters[VC_NCOUNTERS];
    /* vc_drain's receive arena: VC_RX messages, each VC_RX_SIZE bytes and a sockaddr */
    struct mmsghdr *rx;
    struct iovec *rx_iov;
    unsigned char *rx_buf, *rx_names;
    int rx_n, rx_i, rx_budget, rx_short;
};

#define VC_RX 64
#define VC_RX_SIZE 1536 /* > VC_MAX_LEN: a longer datagram is cut (MSG_TRUNC) and dropped */
#define VC_RX_NAME 32   /* >= sizeof(struct sockaddr_in6) */

static size_t vc_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

size_t vc_ncounters(void) { return VC_NCOUNTERS; }

/* Free the relay's tables and arena (any of them may be NULL), then the relay. */
static void vc_relay_release(struct vc_relay *r)
{
    free(r->sess);
    free(r->routes);
    free(r->rx);
    free(r->rx_iov);
    free(r->rx_buf);
    free(r->rx_names);
    free(r);
}

struct vc_relay *vc_relay_new(uint64_t update, uint64_t final, int namelen)
{
    struct vc_relay *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->sess_cap = 64;
    r->route_cap = 64;
    r->sess = calloc(r->sess_cap, sizeof *r->sess);
    r->routes = calloc(r->route_cap, sizeof *r->routes);
    r->rx = calloc(VC_RX, sizeof *r->rx);
    r->rx_iov = calloc(VC_RX, sizeof *r->rx_iov);
    r->rx_buf = malloc((size_t)VC_RX * VC_RX_SIZE);
    r->rx_names = calloc(VC_RX, VC_RX_NAME);
    if (!r->sess || !r->routes || !r->rx || !r->rx_iov || !r->rx_buf || !r->rx_names) {
        vc_relay_release(r);
        return NULL;
    }
    r->update = (sha256_update_fn)(uintptr_t)update;
    r->final = (sha256_final_fn)(uintptr_t)final;
    r->namelen = (size_t)namelen;
    r->rate = 1.0;
    r->burst = 1.0;
    r->max_datagram = VC_MAX_LEN;
    return r;
}

uint64_t *vc_counters(struct vc_relay *r) { return r->counters; }

/* The limits (relay.RelayLimits) and the clock: doubles travel as integer micro-units, so
 * that the caller needs no ctypes conversions. */
void vc_set_limits(struct vc_relay *r, long rate_milli, long burst, long max_datagram)
{
    r->rate = (double)rate_milli / 1000.0;
    r->burst = (double)burst;
    r->max_datagram = (size_t)max_datagram;
}

void vc_set_now(struct vc_relay *r, long long now_us) { r->now = (double)now_us / 1e6; }

static struct vc_sess **vc_sess_slot(struct vc_relay *r, uint32_t id)
{
    size_t mask = r->sess_cap - 1, i = vc_hash(id) & mask;
    while (r->sess[i] && r->sess[i]->id != id)
        i = (i + 1) & mask;
    return &r->sess[i];
}

static struct vc_sess *vc_sess_get(struct vc_relay *r, uint32_t id)
{
    return *vc_sess_slot(r, id);
}

static int vc_sess_grow(struct vc_relay *r)
{
    size_t old_cap = r->sess_cap;
    struct vc_sess **old = r->sess;
    r->sess = calloc(old_cap * 2, sizeof *r->sess);
    if (!r->sess) {
        r->sess = old;
        return -1;
    }
    r->sess_cap = old_cap * 2;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i])
            *vc_sess_slot(r, old[i]->id) = old[i];
    free(old);
    return 0;
}

/* A session logged in: its K_c2s as HMAC states (vc_key_state_size bytes), its token bucket
 * full. Returns 0, or -1 (no memory, a bad length or a taken id). */
long vc_sess_add(struct vc_relay *r, long id, const unsigned char *c2s, int c2s_len)
{
    if (id <= 0 || id > 0xffffffffL || (size_t)c2s_len != VC_KEY_STATE)
        return -1;
    if (2 * (r->sess_n + 1) > r->sess_cap && vc_sess_grow(r))
        return -1;
    struct vc_sess **slot = vc_sess_slot(r, (uint32_t)id);
    if (*slot)
        return -1;
    struct vc_sess *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->id = (uint32_t)id;
    memcpy(s->c2s, c2s, VC_KEY_STATE);
    s->tokens = r->burst;
    s->tokens_last = -1e300; /* never */
    *slot = s;
    r->sess_n++;
    return 0;
}

/* A session ended (unknown ids are ignored). Linear probing with backward-shift deletion. */
void vc_sess_del(struct vc_relay *r, long id)
{
    if (id <= 0 || id > 0xffffffffL)
        return;
    struct vc_sess **slot = vc_sess_slot(r, (uint32_t)id);
    if (!*slot)
        return;
    free((*slot)->chans);
    free(*slot);
    *slot = NULL;
    r->sess_n--;
    size_t mask = r->sess_cap - 1, hole = (size_t)(slot - r->sess), i = hole;
    for (;;) {
        i = (i + 1) & mask;
        struct vc_sess *s = r->sess[i];
        if (!s)
            return;
        size_t home = vc_hash(s->id) & mask;
        /* s may move into the hole when its home is not in (hole, i] (cyclically) */
        if ((i > hole && (home <= hole || home > i)) || (i < hole && home <= hole && home > i)) {
            r->sess[hole] = s;
            r->sess[i] = NULL;
            hole = i;
        }
    }
}

/* The session's validated address (a sockaddr of namelen bytes), or none (addr_len 0). */
long vc_sess_addr(struct vc_relay *r, long id, const unsigned char *addr, int addr_len)
{
    struct vc_sess *s = id > 0 && id <= 0xffffffffL ? vc_sess_get(r, (uint32_t)id) : NULL;
    if (!s || addr_len < 0 || (size_t)addr_len > sizeof s->addr)
        return -1;
    memcpy(s->addr, addr, (size_t)addr_len);
    s->addrlen = (uint32_t)addr_len;
    return 0;
}

/* Hop-MAC-valid UDP datagrams from the session so far (-1: unknown). */
long long vc_sess_received(struct vc_relay *r, long id)
{
    struct vc_sess *s = id > 0 && id <= 0xffffffffL ? vc_sess_get(r, (uint32_t)id) : NULL;
    return s ? (long long)s->received : -1;
}

static int vc_take_token_of(struct vc_relay *r, struct vc_sess *s)
{
    if (r->now > s->tokens_last) {
        double tokens = s->tokens + (r->now - s->tokens_last) * r->rate;
        s->tokens = tokens < r->burst ? tokens : r->burst;
        s->tokens_last = r->now;
    }
    if (s->tokens < 1.0)
        return 0;
    s->tokens -= 1.0;
    return 1;
}

/* One packet from the session's token bucket at the current time (a PING): 1, or 0 when the
 * bucket is empty, -1 for an unknown session. */
long vc_take_token(struct vc_relay *r, long id)
{
    struct vc_sess *s = id > 0 && id <= 0xffffffffL ? vc_sess_get(r, (uint32_t)id) : NULL;
    return s ? vc_take_token_of(r, s) : -1;
}

/* Forget every route (the roster, an address or a listener's transport changed). */
void vc_routes_clear(struct vc_relay *r)
{
    for (size_t i = 0; i < r->route_cap; i++)
        if (r->routes[i].used)
            free(r->routes[i].plan);
    memset(r->routes, 0, r->route_cap * sizeof *r->routes);
    r->route_n = 0;
}

static struct vc_route *vc_route_slot(struct vc_route *t, size_t cap, uint32_t ch, uint32_t sid)
{
    size_t mask = cap - 1, i = vc_hash(((uint64_t)ch << 32) | sid) & mask;
    while (t[i].used && (t[i].channel != ch || t[i].sender != sid))
        i = (i + 1) & mask;
    return &t[i];
}

/* The copies of sender's voice in channel (key states, then names, as vc_add takes them),
 * and whether the channel has listeners off UDP (tunnel, unreachable, other nodes). Returns 0
 * or -1 (no memory, bad lengths). */
long vc_route_set(struct vc_relay *r, long channel, long sender, const unsigned char *plan,
                  int plan_len, int extras)
{
    size_t entry = VC_KEY_STATE + r->namelen;
    if (plan_len < 0 || (size_t)plan_len % entry || channel < 0 || channel > 0xffffffffL ||
        sender <= 0 || sender > 0xffffffffL)
        return -1;
    if (2 * (r->route_n + 1) > r->route_cap) {
        size_t cap = r->route_cap * 2;
        struct vc_route *t = calloc(cap, sizeof *t);
        if (!t)
            return -1;
        for (size_t i = 0; i < r->route_cap; i++)
            if (r->routes[i].used)
                *vc_route_slot(t, cap, r->routes[i].channel, r->routes[i].sender) = r->routes[i];
        free(r->routes);
        r->routes = t;
        r->route_cap = cap;
    }
    unsigned char *copy = malloc(plan_len ? (size_t)plan_len : 1);
    if (!copy)
        return -1;
    memcpy(copy, plan, (size_t)plan_len);
    struct vc_route *rt = vc_route_slot(r->routes, r->route_cap, (uint32_t)channel, (uint32_t)sender);
    if (rt->used)
        free(rt->plan);
    else
        r->route_n++;
    rt->channel = (uint32_t)channel;
    rt->sender = (uint32_t)sender;
    rt->used = 1;
    rt->extras = extras != 0;
    rt->plan = copy;
    rt->plan_len = (size_t)plan_len;
    return 0;
}

void vc_relay_free(struct vc_relay *r)
{
    if (!r)
        return;
    vc_routes_clear(r);
    for (size_t i = 0; i < r->sess_cap; i++)
        if (r->sess[i]) {
            free(r->sess[i]->chans);
            free(r->sess[i]);
        }
    vc_relay_release(r);
}

static uint32_t vc_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* HMAC-SHA256 from the keyed states, its first 10 bytes compared in constant time. */
static int vc_mac_ok(struct vc_relay *r, const unsigned char *key, const unsigned char *data,
                     size_t n)
{
    union {
        sha256_state s;
        unsigned char pad[VC_SCRATCH];
    } ctx;
    unsigned char inner[32], mac[32];
    memcpy(&ctx.s, key, sizeof ctx.s);
    r->update(&ctx.s, data, n);
    r->final(inner, &ctx.s);
    memcpy(&ctx.s, key + sizeof ctx.s, sizeof ctx.s);
    r->update(&ctx.s, inner, sizeof inner);
    r->final(mac, &ctx.s);
    unsigned char diff = 0;
    for (size_t i = 0; i < VC_HOP_MAC; i++)
        diff |= mac[i] ^ data[n + i];
    return diff == 0;
}

/* The window of (session, channel, gen), made when new (NULL: an old generation, or no
 * memory, in *why). The newest VC_KEPT_GENS generations are kept, as relay.py keeps them. */
static struct vc_gen *vc_window(struct vc_sess *s, uint32_t channel, uint32_t gen, int *why)
{
    struct vc_chan *c = NULL;
    for (uint32_t i = 0; i < s->nchan; i++)
        if (s->chans[i].channel == channel) {
            c = &s->chans[i];
            break;
        }
    if (!c) {
        if (s->nchan == s->capchan) {
            uint32_t cap = s->capchan ? 2 * s->capchan : 4;
            struct vc_chan *t = realloc(s->chans, cap * sizeof *t);
            if (!t) {
                *why = D_RATE_LIMIT; /* no memory: refuse the packet, as a full bucket would */
                return NULL;
            }
            s->chans = t;
            s->capchan = cap;
        }
        c = &s->chans[s->nchan++];
        memset(c, 0, sizeof *c);
        c->channel = channel;
    }
    uint32_t oldest = 0;
    for (uint32_t i = 0; i < c->ngens; i++) {
        if (c->gens[i].gen == gen)
            return &c->gens[i];
        if (c->gens[i].gen < c->gens[oldest].gen)
            oldest = i;
    }
    struct vc_gen *g;
    if (c->ngens < VC_KEPT_GENS) {
        g = &c->gens[c->ngens++];
    } else {
        if (gen < c->gens[oldest].gen) {
            *why = D_OLD_GENERATION; /* its window is gone: a replay cannot be ruled out */
            return NULL;
        }
        g = &c->gens[oldest]; /* the newest VC_KEPT_GENS stay */
    }
    memset(g, 0, sizeof *g);
    g->gen = gen;
    g->top = -1;
    return g;
}

/* crypto.replay.ReplayWindow.check then update, for a 128-counter window. */
static int vc_replay_accept(struct vc_gen *g, uint32_t ctr_)
{
    int64_t ctr = ctr_, delta = g->top - ctr;
    if (delta < 0) {
        int64_t shift = -delta;
        if (shift >= VC_WINDOW) {
            g->mask[0] = 1;
            g->mask[1] = 0;
        } else if (shift >= 64) {
            g->mask[1] = g->mask[0] << (shift - 64);
            g->mask[0] = 1;
        } else {
            g->mask[1] = (g->mask[1] << shift) | (shift ? g->mask[0] >> (64 - shift) : 0);
            g->mask[0] = (g->mask[0] << shift) | 1;
        }
        g->top = ctr;
        return 1;
    }
    if (delta >= VC_WINDOW)
        return 0;
    uint64_t bit = 1ULL << (delta & 63);
    uint64_t *w = &g->mask[delta >> 6];
    if (*w & bit)
        return 0;
    *w |= bit;
    return 1;
}

#define VC_DROP(why)                                                                           \
    do {                                                                                       \
        r->counters[why]++;                                                                    \
        return VC_DROPPED;                                                                     \
    } while (0)

/* Steps from the route on: speak right, replay window, size, rate, fan-out. */
static long vc_back(struct vc_relay *r, struct vc_batch *b, struct vc_sess *s,
                    const unsigned char *data, size_t n)
{
    uint32_t channel = vc_be32(data + 4), sender = vc_be32(data + 8);
    struct vc_route *rt = vc_route_slot(r->routes, r->route_cap, channel, sender);
    if (!rt->used)
        return VC_ROUTE;
    size_t entry = VC_KEY_STATE + r->namelen, m = rt->plan_len / entry;
    int big = b && m > b->max;
    if (b && !big && (b->n + m > b->max || b->cur + n > b->body_end))
        return VC_FULL;
    int why = 0;
    struct vc_gen *g = vc_window(s, channel, vc_be32(data + 12), &why);
    if (!g)
        VC_DROP(why);
    if (!vc_replay_accept(g, vc_be32(data + 16)))
        VC_DROP(D_REPLAY);
    if (n > r->max_datagram)
        VC_DROP(D_OVERSIZE);
    if (!vc_take_token_of(r, s))
        VC_DROP(D_RATE_LIMIT);
    r->counters[C_FORWARDED]++;
    if (!b)
        return VC_SELF;
    if (big)
        return VC_BIG;
    long copies = m ? vc_add(b, data, (int)n, (int)(n - VC_HOP_MAC), rt->plan, (int)rt->plan_len) : 0;
    r->counters[C_COPIES_UDP] += (uint64_t)copies;
    r->counters[C_PACKETS_OUT] += (uint64_t)copies;
    r->counters[C_BYTES_OUT] += (uint64_t)copies * n;
    return rt->extras ? copies + VC_EXTRAS : copies;
}

/* One datagram: from a UDP address (addr of addr_len bytes; named 0), or from the TLS
 * connection of session `named` (addr ignored: the tunnel has no address to check and carries
 * no hop control). The copies go into batch b, or with b NULL the checks alone run (VC_SELF). */
static long vc_datagram(struct vc_relay *r, struct vc_batch *b, const unsigned char *data,
                        int len, const unsigned char *addr, int addr_len, uint32_t named)
{
    if (len < 0 || addr_len < 0)
        return VC_BAD;
    size_t n = (size_t)len;
    r->counters[C_PACKETS_IN]++;
    r->counters[C_BYTES_IN] += n;
    if (n < VC_MIN_LEN || n > VC_MAX_LEN)
        VC_DROP(D_BAD_LENGTH);
    if (data[0] != 0x01)
        VC_DROP(D_UNKNOWN_VERSION);
    unsigned ptype = data[1];
    int voice = ptype == 0x01 || ptype == 0x02;
    if (!voice && (named || (ptype != 0x10 && ptype != 0x12 && ptype != 0x14)))
        VC_DROP(D_UNKNOWN_PTYPE);
    uint32_t sender = vc_be32(data + 8);
    if (named && sender != named)
        VC_DROP(D_SENDER_MISMATCH);
    struct vc_sess *s = vc_sess_get(r, sender);
    if (!s)
        VC_DROP(D_UNKNOWN_SESSION);
    if (!vc_mac_ok(r, s->c2s, data, n - VC_HOP_MAC))
        VC_DROP(D_BAD_HOP_MAC);
    if (named)
        return vc_back(r, b, s, data, n);
    s->received++;
    if (!voice)
        return VC_HOP;
    if ((size_t)addr_len != s->addrlen || !s->addrlen || memcmp(addr, s->addr, s->addrlen))
        VC_DROP(D_UNVALIDATED_ADDRESS);
    return vc_back(r, b, s, data, n);
}

/* A datagram from a UDP address (addr_len bytes of sockaddr). C ints only: ctypes passes
 * Python ints and bytes that way without conversion functions (see vc_add). */
long vc_voice(struct vc_relay *r, struct vc_batch *b, const unsigned char *data, int len,
              const unsigned char *addr, int addr_len)
{
    return vc_datagram(r, b, data, len, addr, addr_len, 0);
}

/* A datagram from the TLS connection of session `named`. */
long vc_tunnel(struct vc_relay *r, struct vc_batch *b, const unsigned char *data, int len,
               uint32_t named)
{
    return named ? vc_datagram(r, b, data, len, NULL, 0, named) : VC_BAD;
}

/* After VC_ROUTE (a route installed) or VC_FULL (the batch flushed): the same datagram
 * again from the route on, its earlier steps not repeated. VC_ROUTE again when relay.py
 * installed no route (the sender may not speak there). */
long vc_resume(struct vc_relay *r, struct vc_batch *b, const unsigned char *data, int len)
{
    if (len < VC_MIN_LEN || len > VC_MAX_LEN)
        return VC_BAD;
    struct vc_sess *s = vc_sess_get(r, vc_be32(data + 8));
    if (!s)
        return VC_BAD;
    return vc_back(r, b, s, data, (size_t)len);
}

/* ---- vc_drain: the UDP socket read in C -----------------------------------------------------
 *
 * One wake-up of the relay's UDP socket: recvmmsg reads up to VC_RX datagrams at a time (up
 * to the wake-up's budget), each goes through the checks above and its copies into
 * the batch, all without returning to Python. It stops at the first datagram C does not finish
 * (hop control, a missing route, a full batch, copies for Python to make) and returns its code:
 * relay.py handles that datagram (vc_rx_data/size/name give it), calls vc_rx_next, then
 * vc_drain again with budget -1, so every datagram is handled in the order it came.
 *
 * A wake-up is one call in the common case: `now` (the loop's clock, seconds; read when budget
 * >= 0) comes with it, and when nothing more is to be read the batch is flushed here (vc_flush).
 * A recvmmsg that returned fewer datagrams than it asked for emptied the socket: the wake-up
 * ends there, without a second call to learn EAGAIN (the loop's poll is level-triggered, so a
 * datagram that came since wakes it again). */
#define VC_DONE (-8)       /* nothing more to read now (or the budget is spent) */
#define VC_RECV_ERROR (-9) /* recvmmsg failed with something else than EAGAIN/EINTR */

const unsigned char *vc_rx_data(struct vc_relay *r) { return r->rx_buf + (size_t)r->rx_i * VC_RX_SIZE; }
long vc_rx_size(struct vc_relay *r) { return (long)r->rx[r->rx_i].msg_len; }
const unsigned char *vc_rx_name(struct vc_relay *r) { return r->rx_names + (size_t)r->rx_i * VC_RX_NAME; }
long vc_rx_namelen(struct vc_relay *r) { return (long)r->rx[r->rx_i].msg_hdr.msg_namelen; }
void vc_rx_next(struct vc_relay *r)
{
    if (r->rx_i < r->rx_n)
        r->rx_i++;
}

static long vc_drained(struct vc_batch *b, int fd)
{
    if (b && b->n)
        vc_flush(b, fd);
    return VC_DONE;
}

long vc_drain(struct vc_relay *r, struct vc_batch *b, int fd, int budget, double now)
{
    if (budget >= 0) { /* a new wake-up: at most budget datagrams (-1: go on with this one) */
        r->rx_budget = budget;
        r->rx_short = 0;
        r->now = now;
    }
    for (;;) {
        if (r->rx_i >= r->rx_n) {
            int want = r->rx_budget < VC_RX ? r->rx_budget : VC_RX;
            if (want <= 0 || r->rx_short)
                return vc_drained(b, fd);
            for (int i = 0; i < want; i++) {
                r->rx_iov[i].iov_base = r->rx_buf + (size_t)i * VC_RX_SIZE;
                r->rx_iov[i].iov_len = VC_RX_SIZE;
                r->rx[i].msg_hdr = (struct msghdr){
                    .msg_name = r->rx_names + (size_t)i * VC_RX_NAME,
                    .msg_namelen = VC_RX_NAME,
                    .msg_iov = &r->rx_iov[i],
                    .msg_iovlen = 1,
                };
            }
            int n = recvmmsg(fd, r->rx, (unsigned)want, MSG_DONTWAIT, NULL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return vc_drained(b, fd);
                r->rx_budget--; /* as Python's drain: an error costs one of the budget */
                return VC_RECV_ERROR;
            }
            if (n == 0)
                return vc_drained(b, fd);
            r->rx_short = n < want;
            r->rx_n = n;
            r->rx_i = 0;
            r->rx_budget -= n;
        }
        struct mmsghdr *m = &r->rx[r->rx_i];
        unsigned char *name = r->rx_names + (size_t)r->rx_i * VC_RX_NAME;
        size_t namelen = m->msg_hdr.msg_namelen;
        if (namelen == 28) /* sockaddr_in6: the address is (host, port), as relay.py packs it */
            memset(name + 4, 0, 4), memset(name + 24, 0, 4);
        int len = (m->msg_hdr.msg_flags & MSG_TRUNC) ? VC_MAX_LEN + 1 : (int)m->msg_len;
        long code = vc_datagram(r, b, r->rx_buf + (size_t)r->rx_i * VC_RX_SIZE, len, name,
                                (int)(namelen <= VC_RX_NAME ? namelen : 0), 0);
        if ((code >= 0 && code < VC_EXTRAS) || code == VC_DROPPED) {
            r->rx_i++;
            continue;
        }
        return code; /* a cut datagram never gets here: it fails the length check */
    }
}
