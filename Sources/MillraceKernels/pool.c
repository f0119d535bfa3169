/*
 * A tiny persistent worker pool: mr_run_parts(n, fn, ctx) runs fn(ctx, 0..n-1), part 0 on the
 * calling thread and the others on parked workers, and returns when all are done.
 *
 * Handing a part over and waiting for it first spin for a while (about 1 ms) on an atomic flag,
 * then sleep on a condition variable. A forward of one image runs a parallel region per
 * convolution with short serial stretches between them (norms, attention, element-wise ops):
 * with sleeping alone, each region paid two futex wake-ups, about a tenth of a batch-1 forward in
 * perf. A spin of 0.1 ms removed most of that; 1 ms made the bench UNet's one-image forward 2.5%
 * faster again (median of 12 alternating pairs, faster in all 12), since some serial stretches
 * outlast 0.1 ms. An idle pool still costs nothing after that first millisecond.
 */
#include "millrace_kernels.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>

enum { MAX_WORKERS = 15 };

typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, done_cv;
    void (*fn)(void *, int);
    void *ctx;
    int part;
    atomic_int pending; /* 1 while a part is assigned and not finished (set and cleared under lock) */
    int started;
} worker;

enum { SPINS = 20000 }; /* pause instructions, about 1 ms */

/* Spins until *flag == want or SPINS pauses have passed; returns whether it got there. */
static int spin_until(atomic_int *flag, int want) {
    for (int i = 0; i < SPINS; i++) {
        if (atomic_load_explicit(flag, memory_order_acquire) == want) return 1;
        _mm_pause();
    }
    return atomic_load_explicit(flag, memory_order_acquire) == want;
}

static worker workers[MAX_WORKERS];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;  /* one parallel region at a time */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker_main(void *arg) {
    worker *w = arg;
    mr_set_thread_serial(1);  /* kernels inside a part never split again */
    for (;;) {
        if (!spin_until(&w->pending, 1)) {
            pthread_mutex_lock(&w->lock);
            while (!atomic_load(&w->pending)) pthread_cond_wait(&w->wake, &w->lock);
            pthread_mutex_unlock(&w->lock);
        }
        /* the caller wrote these before setting pending (acquire above) */
        void (*fn)(void *, int) = w->fn;
        void *ctx = w->ctx;
        int part = w->part;
        fn(ctx, part);
        pthread_mutex_lock(&w->lock);
        atomic_store(&w->pending, 0);
        pthread_cond_signal(&w->done_cv);
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

static int ensure_started(int i) {
    worker *w = &workers[i];
    pthread_mutex_lock(&start_lock);
    if (!w->started) {
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->wake, NULL);
        pthread_cond_init(&w->done_cv, NULL);
        if (pthread_create(&w->thread, NULL, worker_main, w) == 0) {
            pthread_detach(w->thread);
            w->started = 1;
        }
    }
    int ok = w->started;
    pthread_mutex_unlock(&start_lock);
    return ok;
}

void mr_run_parts(int parts, void (*fn)(void *ctx, int part), void *ctx) {
    if (parts <= 1) { if (parts == 1) fn(ctx, 0); return; }
    if (parts > MAX_WORKERS + 1) parts = MAX_WORKERS + 1;
    pthread_mutex_lock(&pool_lock);
    int launched[MAX_WORKERS] = {0};
    for (int p = 1; p < parts; p++) {
        worker *w = &workers[p - 1];
        if (!ensure_started(p - 1)) continue;
        pthread_mutex_lock(&w->lock);
        w->fn = fn; w->ctx = ctx; w->part = p;
        atomic_store(&w->pending, 1);
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        launched[p - 1] = 1;
    }
    /* The thread's own mark, not mr_parallel_parts() == 1: with one kernel thread set (as
       another thread may do between a caller choosing its parts and this call) that would mark
       the caller serial for good on the way out. */
    int serial_before = mr_thread_serial();
    mr_set_thread_serial(1);
    fn(ctx, 0);
    mr_set_thread_serial(serial_before);
    for (int p = 1; p < parts; p++) {
        worker *w = &workers[p - 1];
        if (!launched[p - 1]) {  /* no thread: run it here */
            mr_set_thread_serial(1);
            fn(ctx, p);
            mr_set_thread_serial(serial_before);
            continue;
        }
        if (spin_until(&w->pending, 0)) continue;
        pthread_mutex_lock(&w->lock);
        while (atomic_load(&w->pending)) pthread_cond_wait(&w->done_cv, &w->lock);
        pthread_mutex_unlock(&w->lock);
    }
    pthread_mutex_unlock(&pool_lock);
}
