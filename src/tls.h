/*
 * Internal: thread-locals on the path of every call.  In a shared library
 * the default (global-dynamic) model costs a __tls_get_addr call per access
 * (about 15 instructions, measured by callgrind on pgg_exec); initial-exec
 * is a plain %fs-relative load.  glibc keeps static TLS room for libraries
 * loaded later with dlopen, and ours are a few bytes.
 */
#ifndef PGG_TLS_H
#define PGG_TLS_H

#if defined(__GNUC__) || defined(__clang__)
#define PGG_TLS _Thread_local __attribute__((tls_model("initial-exec")))
#else
#define PGG_TLS _Thread_local
#endif

#endif
