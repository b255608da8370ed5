#ifndef SWETCD_CRESOLV_SHIM_H
#define SWETCD_CRESOLV_SHIM_H
// DNS SRV lookups through the system resolver (glibc's res_nquery, /etc/resolv.conf), for
// --discovery-srv. One call answers one name; the records are copied into plain structs.
#include <netinet/in.h>
#include <arpa/nameser.h>
#include <resolv.h>
#include <netdb.h>
#include <string.h>
#include <stdlib.h>

struct swetcd_srv_record {
    unsigned short priority;
    unsigned short weight;
    unsigned short port;
    char target[NS_MAXDNAME];
};

// Outcome codes besides a record count >= 0.
#define SWETCD_SRV_NOT_FOUND (-1)   // NXDOMAIN or no SRV records (h_errno HOST_NOT_FOUND / NO_DATA)
#define SWETCD_SRV_TRY_AGAIN (-2)   // no answer from any nameserver (TRY_AGAIN)
#define SWETCD_SRV_FAILED (-3)      // resolver could not start, or a malformed answer
#define SWETCD_SRV_MAX_ANSWER 65536

// Looks up the SRV records of `name` (absolute, e.g. "_etcd-server._tcp.example.com.").
// Writes at most `max` records to `out`; returns how many, or one of the codes above.
static inline int swetcd_srv_lookup(const char *name, struct swetcd_srv_record *out, int max) {
    struct __res_state state;
    memset(&state, 0, sizeof(state));
    if (res_ninit(&state) != 0) return SWETCD_SRV_FAILED;
    unsigned char *answer = malloc(SWETCD_SRV_MAX_ANSWER);
    if (answer == NULL) { res_nclose(&state); return SWETCD_SRV_FAILED; }
    int len = res_nquery(&state, name, ns_c_in, ns_t_srv, answer, SWETCD_SRV_MAX_ANSWER);
    if (len < 0) {
        int herr = state.res_h_errno;
        free(answer);
        res_nclose(&state);
        if (herr == HOST_NOT_FOUND || herr == NO_DATA) return SWETCD_SRV_NOT_FOUND;
        if (herr == TRY_AGAIN) return SWETCD_SRV_TRY_AGAIN;
        return SWETCD_SRV_FAILED;
    }
    if (len > SWETCD_SRV_MAX_ANSWER) len = SWETCD_SRV_MAX_ANSWER;
    ns_msg msg;
    if (ns_initparse(answer, len, &msg) != 0) { free(answer); res_nclose(&state); return SWETCD_SRV_FAILED; }
    int count = 0;
    int n = ns_msg_count(msg, ns_s_an);
    for (int i = 0; i < n && count < max; i++) {
        ns_rr rr;
        if (ns_parserr(&msg, ns_s_an, i, &rr) != 0) break;
        if (ns_rr_type(rr) != ns_t_srv || ns_rr_rdlen(rr) < 7) continue;
        const unsigned char *rd = ns_rr_rdata(rr);
        out[count].priority = (unsigned short)((rd[0] << 8) | rd[1]);
        out[count].weight = (unsigned short)((rd[2] << 8) | rd[3]);
        out[count].port = (unsigned short)((rd[4] << 8) | rd[5]);
        if (dn_expand(ns_msg_base(msg), ns_msg_end(msg), rd + 6, out[count].target, NS_MAXDNAME) < 0) continue;
        count++;
    }
    free(answer);
    res_nclose(&state);
    return count == 0 ? SWETCD_SRV_NOT_FOUND : count;
}

#endif
