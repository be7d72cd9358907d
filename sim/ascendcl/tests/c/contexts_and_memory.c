/*
 * Contexts, run mode, device synchronisation, pointer attributes, batch copies and event timing in one
 * process, each allowed and refused as documented.
 */
#include <stdint.h>

#include "common.h"

#define FAIL(...)                         \
    do {                                  \
        fprintf(stderr, __VA_ARGS__);     \
        fputc('\n', stderr);              \
        exit(1);                          \
    } while (0)

int main(void) {
    aclrtContext ctx = NULL, def = NULL, cur = NULL;
    aclrtRunMode mode = ACL_DEVICE;
    int32_t dev = -1;
    CHECK(aclInit(NULL));
    EXPECT(aclInit(NULL), ACL_ERROR_REPEAT_INITIALIZE);
    EXPECT(aclrtGetCurrentContext(&cur), ACL_ERROR_RT_CONTEXT_NULL);
    CHECK(aclrtGetRunMode(&mode));
    if (mode != ACL_HOST) FAIL("run mode %d, expected ACL_HOST", (int)mode);

    CHECK(aclrtSetDevice(0));
    CHECK(aclrtGetCurrentContext(&def));
    EXPECT(aclrtDestroyContext(def), ACL_ERROR_RT_CONTEXT_NULL);
    CHECK(aclrtCreateContext(&ctx, 1));
    CHECK(aclrtGetDevice(&dev));
    if (dev != 1) FAIL("device %d after creating a context on 1", dev);
    CHECK(aclrtGetCurrentContext(&cur));
    if (cur != ctx) FAIL("the new context is not current");
    CHECK(aclrtSetCurrentContext(def));
    CHECK(aclrtGetDevice(&dev));
    if (dev != 0) FAIL("device %d after going back to device 0's context", dev);
    CHECK(aclrtSetCurrentContext(ctx));
    EXPECT(aclrtSetCurrentContext(NULL), ACL_ERROR_INVALID_PARAM);
    CHECK(aclrtSynchronizeDevice());

    /* Pointer attributes: device memory of device 1, page-locked host memory, other host memory. */
    void *d = NULL, *pinned = NULL;
    static char plain[4096];
    aclrtPtrAttributes attr;
    CHECK(aclrtMalloc(&d, 2 << 20, ACL_MEM_MALLOC_HUGE_ONLY));
    CHECK(aclrtMallocHost(&pinned, 4096));
    CHECK(aclrtPointerGetAttributes(d, &attr));
    if (attr.location.type != ACL_MEM_LOCATION_TYPE_DEVICE || attr.location.id != 1 || attr.pageSize != (2u << 20))
        FAIL("device memory: type %d id %u page %u", (int)attr.location.type, attr.location.id, attr.pageSize);
    CHECK(aclrtPointerGetAttributes(pinned, &attr));
    if (attr.location.type != ACL_MEM_LOCATION_TYPE_HOST) FAIL("pinned memory: type %d", (int)attr.location.type);
    CHECK(aclrtPointerGetAttributes(plain, &attr));
    if (attr.location.type != ACL_MEM_LOCATION_TYPE_UNREGISTERED) FAIL("plain memory: type %d", (int)attr.location.type);
    EXPECT(aclrtPointerGetAttributes(NULL, &attr), ACL_ERROR_INVALID_PARAM);

    /* A batch: pinned host to device, then device to plain host; then a refused device-to-device copy. */
    for (int i = 0; i < 4096; i++) ((unsigned char *)pinned)[i] = (unsigned char)(i * 7);
    aclrtMemcpyBatchAttr up = {0}, down = {0}, dd = {0};
    up.dstLoc.type = ACL_MEM_LOCATION_TYPE_DEVICE;
    up.dstLoc.id = 1;
    up.srcLoc.type = ACL_MEM_LOCATION_TYPE_HOST;
    down.dstLoc = up.srcLoc;
    down.srcLoc = up.dstLoc;
    dd.dstLoc = up.dstLoc;
    dd.srcLoc = up.dstLoc;
    void *dsts[2] = {d, (char *)d + 4096};
    void *srcs[2] = {pinned, (char *)pinned + 2048};
    size_t maxes[2] = {2048, 2048}, sizes[2] = {2048, 2048}, idx[2] = {0, 1}, fail = 0;
    aclrtMemcpyBatchAttr attrs_up[1] = {up};
    CHECK(aclrtMemcpyBatch(dsts, maxes, srcs, sizes, 2, attrs_up, idx, 1, &fail));
    if (fail != SIZE_MAX) FAIL("failIndex %zu after a good batch", fail);
    void *back_dsts[2] = {plain, plain + 2048};
    void *back_srcs[2] = {d, (char *)d + 4096};
    aclrtMemcpyBatchAttr attrs_down[1] = {down};
    CHECK(aclrtMemcpyBatch(back_dsts, maxes, back_srcs, sizes, 2, attrs_down, idx, 1, &fail));
    if (memcmp(plain, pinned, 4096) != 0) FAIL("the batch did not copy the bytes there and back");
    void *mixed_srcs[2] = {pinned, d};
    void *mixed_dsts[2] = {d, (char *)d + 8192};
    aclrtMemcpyBatchAttr attrs_mixed[2] = {up, dd};
    EXPECT(aclrtMemcpyBatch(mixed_dsts, maxes, mixed_srcs, sizes, 2, attrs_mixed, idx, 2, &fail),
           ACL_ERROR_RT_PARAM_INVALID);
    if (fail != 1) FAIL("failIndex %zu, expected 1", fail);

    /* Timing between two events of aclrtCreateEvent. */
    aclrtEvent start = NULL, end = NULL;
    aclrtStream s = NULL;
    float ms = -1;
    CHECK(aclrtCreateStream(&s));
    CHECK(aclrtCreateEvent(&start));
    CHECK(aclrtCreateEvent(&end));
    EXPECT(aclrtEventElapsedTime(&ms, start, end), ACL_ERROR_RT_INTERNAL_ERROR);
    CHECK(aclrtRecordEvent(start, s));
    CHECK(aclrtMemcpyAsync((char *)d + 8192, 4096, pinned, 4096, ACL_MEMCPY_HOST_TO_DEVICE, s));
    CHECK(aclrtRecordEvent(end, s));
    CHECK(aclrtSynchronizeStream(s));
    CHECK(aclrtEventElapsedTime(&ms, start, end));
    if (ms < 0) FAIL("elapsed %f ms", ms);
    CHECK(aclrtDestroyEvent(start));
    CHECK(aclrtDestroyEvent(end));
    CHECK(aclrtDestroyStream(s));

    CHECK(aclrtFree(d));
    CHECK(aclrtFreeHost(pinned));
    CHECK(aclrtDestroyContext(ctx));
    EXPECT(aclrtGetCurrentContext(&cur), ACL_ERROR_RT_CONTEXT_NULL);
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtResetDeviceForce(0));
    CHECK(aclFinalize());
    printf("contexts_and_memory: ok\n");
    return 0;
}
