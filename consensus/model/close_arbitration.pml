/*
 * Close arbitration of mbms (consensus/src/peer.rs), abstracted for spin.
 *
 * N = 3 peers, quorum Q = 2. Each peer publishes a snapshot: its request ticket and its one
 * grant (grantee, ticket). Every peer keeps a view of every other peer's last snapshot; a
 * delivery (process Net) copies the current snapshot of s into r's view at any moment, or
 * never: that covers loss, delay, duplicates, inconsistent omission and partitions (views
 * are latest-wins because the protocol drops older sequence numbers).
 *
 * Time is abstracted by the lease argument of the implementation: a requester uses its
 * lease only while lease[i] holds; a grantor may expire (or forget, by crashing) a grant
 * only once the grantee's lease for that ticket has ended. In the code this is the drift
 * arithmetic: grants are given after t_req, a grantor keeps a grant lease_ms on its own
 * clock, the requester stops at t_req + lease·(1−2ρ) on its clock, and a restarted peer
 * grants nothing for lease·(1+2ρ) + one period. A requester never reuses a ticket while a
 * grant for it may be alive (the ticket guard), and counts only grants heard after its
 * request (its grant views are cleared when it requests). A grantor releases a grant when
 * it hears the grantee show another ticket after the grant.
 *
 * S2, asserted when a string starts precharging: no other string is precharging/closing,
 * and a quorum of peers really hold a grant for its ticket (their own state, not the
 * requester's possibly stale view).
 *
 * -DBROKEN adds the tempting shortcut "the bus looks dead (my view shows nobody closing):
 * close without grants". spin must find the double close.
 */

#define N 3
#define Q 2
#ifndef T
#define T 1           /* tickets 1..T; T = 2 explodes the state space (check.sh --deep: bitstate) */
#endif
#define V(r, s) ((r) * N + (s))

byte req[N];          /* published request ticket, 0 = none */
byte gto[N];          /* published grant: grantee + 1, 0 = none */
byte gtk[N];          /* published grant: the grantee's ticket */
bool closing[N];      /* precharging or closing */
bool lease[N];        /* the requester's lease (on its own clock) has not ended */
byte myt[N];          /* last ticket used */

byte vreq[N * N];     /* r's view of s's request ticket */
byte vg[N * N];       /* r's view: the ticket of r's that s grants (0 = none) */
#ifdef BROKEN
bool vcl[N * N];      /* r's view: s is precharging/closing */
#endif

inline start_closing(i) {
    closing[i] = true;
    k = 0;
    for (j : 0 .. N - 1) { if :: closing[j] -> k++ :: else -> skip fi }
    assert(k == 1);                    /* S2: one string precharging/closing at a time */
}

proctype Peer(byte i) {
    byte c, j, t, k;
end:
    do
    /* ---- requester ---- */
    :: atomic {
        req[i] == 0 && !closing[i] ->
        t = myt[i] % T + 1;
        c = 0;                          /* ticket guard: no grant for (i, t) alive */
        for (j : 0 .. N - 1) { if :: gto[j] == i + 1 && gtk[j] == t -> c++ :: else -> skip fi }
        if
        :: c == 0 ->
            myt[i] = t; req[i] = t; lease[i] = true;
            for (j : 0 .. N - 1) { vg[V(i, j)] = 0 }   /* count only grants heard from now */
        :: else -> skip
        fi;
        c = 0; j = 0; t = 0; k = 0
       }
    :: atomic {
        req[i] != 0 && lease[i] && !closing[i] ->
        c = 0;
        for (j : 0 .. N - 1) {
            if
            :: j == i && gto[i] == i + 1 && gtk[i] == req[i] -> c++
            :: j != i && vg[V(i, j)] == req[i] -> c++
            :: else -> skip
            fi
        }
        if
        :: c >= Q ->
            start_closing(i);
            c = 0;
            for (j : 0 .. N - 1) { if :: gto[j] == i + 1 && gtk[j] == req[i] -> c++ :: else -> skip fi }
            assert(c >= Q)              /* S2: a quorum of unexpired grants */
        :: else -> skip
        fi;
        c = 0; j = 0; t = 0; k = 0
       }
#ifdef BROKEN
    :: atomic {
        req[i] != 0 && lease[i] && !closing[i] ->
        c = 0;
        for (j : 0 .. N - 1) { if :: j != i && vcl[V(i, j)] -> c++ :: else -> skip fi }
        if
        :: c == 0 -> start_closing(i)
        :: else -> skip
        fi;
        c = 0; j = 0; t = 0; k = 0
       }
#endif
    /* closed (main confirmed) or aborted: release */
    :: atomic { closing[i] -> closing[i] = false; req[i] = 0; lease[i] = false }
    /* the lease ends on the requester's clock: it stops (aborts if closing) */
    :: atomic { lease[i] -> lease[i] = false; closing[i] = false; req[i] = 0 }
    /* withdraw (no quorum in time, a competitor, back-off) */
    :: atomic { req[i] != 0 && !closing[i] -> req[i] = 0; lease[i] = false }
    /* ---- grantor: free slot, grant a pending request it has heard of ---- */
    :: atomic { gto[i] == 0 && req[i] != 0 -> gto[i] = i + 1; gtk[i] = req[i] }
    :: atomic {
        gto[i] == 0 && vreq[V(i, (i + 1) % N)] != 0 ->
        k = (i + 1) % N; gto[i] = k + 1; gtk[i] = vreq[V(i, k)]; k = 0
       }
    :: atomic {
        gto[i] == 0 && vreq[V(i, (i + 2) % N)] != 0 ->
        k = (i + 2) % N; gto[i] = k + 1; gtk[i] = vreq[V(i, k)]; k = 0
       }
    /* release: the grantee shows another ticket (the view was the granted ticket at the
       time of the grant, so this needs a later delivery) */
    :: atomic { gto[i] == i + 1 && req[i] != gtk[i] -> gto[i] = 0; gtk[i] = 0 }
    :: atomic {
        gto[i] != 0 && gto[i] != i + 1 && vreq[V(i, gto[i] - 1)] != gtk[i] -> gto[i] = 0; gtk[i] = 0
       }
    /* expiry on the grantor's clock, or a crash that forgets the grant: only once the
       grantee's lease for that ticket has ended (lease arithmetic, grant inhibit) */
    :: atomic {
        gto[i] != 0 && !(lease[gto[i] - 1] && req[gto[i] - 1] == gtk[i]) -> gto[i] = 0; gtk[i] = 0
       }
    od
}

proctype Net() {
end:
    do
    /* deliver s's current snapshot to r (or never: loss, partition) */
    :: atomic { vreq[V(0, 1)] = req[1]; vg[V(0, 1)] = (gto[1] == 1 -> gtk[1] : 0) }
    :: atomic { vreq[V(0, 2)] = req[2]; vg[V(0, 2)] = (gto[2] == 1 -> gtk[2] : 0) }
    :: atomic { vreq[V(1, 0)] = req[0]; vg[V(1, 0)] = (gto[0] == 2 -> gtk[0] : 0) }
    :: atomic { vreq[V(1, 2)] = req[2]; vg[V(1, 2)] = (gto[2] == 2 -> gtk[2] : 0) }
    :: atomic { vreq[V(2, 0)] = req[0]; vg[V(2, 0)] = (gto[0] == 3 -> gtk[0] : 0) }
    :: atomic { vreq[V(2, 1)] = req[1]; vg[V(2, 1)] = (gto[1] == 3 -> gtk[1] : 0) }
#ifdef BROKEN
    :: atomic { vcl[V(0, 1)] = closing[1] }
    :: atomic { vcl[V(0, 2)] = closing[2] }
    :: atomic { vcl[V(1, 0)] = closing[0] }
    :: atomic { vcl[V(1, 2)] = closing[2] }
    :: atomic { vcl[V(2, 0)] = closing[0] }
    :: atomic { vcl[V(2, 1)] = closing[1] }
#endif
    od
}

init {
    atomic { run Peer(0); run Peer(1); run Peer(2); run Net() }
}
