/*
 * A tiny persistent worker pool: mr_run_parts(n, fn, ctx) runs fn(ctx, 0..n-1), part 0 on the
 * calling thread and the others on parked workers, and returns when all are done. Workers sleep
 * on a condition variable between calls; there is no spinning, so an idle pool costs nothing.
 */
#include "millrace_kernels.h"

#include <pthread.h>

enum { MAX_WORKERS = 15 };

typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, done_cv;
    void (*fn)(void *, int);
    void *ctx;
    int part;
    int pending; /* 1 while a part is assigned and not finished */
    int started;
} worker;

static worker workers[MAX_WORKERS];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;  /* one parallel region at a time */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;

static void *worker_main(void *arg) {
    worker *w = arg;
    mr_set_thread_serial(1);  /* kernels inside a part never split again */
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->pending) pthread_cond_wait(&w->wake, &w->lock);
        void (*fn)(void *, int) = w->fn;
        void *ctx = w->ctx;
        int part = w->part;
        pthread_mutex_unlock(&w->lock);
        fn(ctx, part);
        pthread_mutex_lock(&w->lock);
        w->pending = 0;
        pthread_cond_signal(&w->done_cv);
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
        w->fn = fn; w->ctx = ctx; w->part = p; w->pending = 1;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        launched[p - 1] = 1;
    }
    int serial_before = mr_parallel_parts() == 1;
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
        pthread_mutex_lock(&w->lock);
        while (w->pending) pthread_cond_wait(&w->done_cv, &w->lock);
        pthread_mutex_unlock(&w->lock);
    }
    pthread_mutex_unlock(&pool_lock);
}
