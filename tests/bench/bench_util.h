/*
 * What every benchmark program prints its messages with.  The includer
 * defines BENCH_NAME ("bench-pool") before including.  Progress and errors
 * go to stderr: stdout carries only the report.
 */
#ifndef PGG_BENCH_UTIL_H
#define PGG_BENCH_UTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static void bench_vsay(const char *fmt, va_list ap)
{
    fputs(BENCH_NAME ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    bench_vsay(fmt, ap);
    va_end(ap);
    exit(1);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    bench_vsay(fmt, ap);
    va_end(ap);
}

#endif
