/*
 * The README's example: read the first 64 KiB of a file in 16 requests submitted as
 * one batch.  'make installcheck' (and so 'make distcheck') builds it against the
 * installed headers and library through pkg-config and runs it.
 */
#include <stdio.h>
#include <rt/err.h>
#include <rt/file.h>
#include <rt/fileaio.h>
#include <rt/mem.h>

#define N     16
#define BLOCK 4096

int main(int argc, char **argv)
{
    rt_file_t file;
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[N], done[N];
    char *buf = rt_mem_page_alloc(N * BLOCK);
    uint32_t reaped = 0;
    int rc;

    if (argc < 2 || buf == NULL)
        return 2;
    rc = rt_file_open(&file, argv[1], RT_FILE_READ | RT_FILE_OPEN | RT_FILE_ASYNC_IO, 0);
    if (rc != RT_OK) {
        fprintf(stderr, "%s: %s\n", argv[1], rt_strerror(rc));
        return 1;
    }
    rt_aio_ctx_create(&ctx, N, 0); /* best backend on this host */
    for (int i = 0; i < N; i++) {
        rt_aio_req_create(&reqs[i]);
        rt_aio_req_prepare_read(reqs[i], file, (uint64_t)i * BLOCK, buf + i * BLOCK, BLOCK, NULL);
    }
    rc = rt_aio_ctx_submit(ctx, reqs, N); /* all or nothing */
    while (rc == RT_OK && reaped < N) {
        uint32_t got;
        rc = rt_aio_ctx_wait(ctx, 1, RT_INDEFINITE_WAIT, done, N, &got);
        for (uint32_t i = 0; i < got; i++) {
            size_t bytes = 0;
            int status = rt_aio_req_get_rc(done[i], &bytes);
            printf("request %p: %s, %zu bytes\n", (void *)done[i], rt_strerror(status), bytes);
        }
        reaped += got;
    }
    printf("%s backend, %u requests\n", rt_aio_ctx_get_backend(ctx), reaped);
    for (int i = 0; i < N; i++)
        rt_aio_req_destroy(reqs[i]);
    rt_aio_ctx_destroy(ctx);
    rt_file_close(file);
    rt_mem_page_free(buf, N * BLOCK);
    return 0;
}
