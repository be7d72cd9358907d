/*
 * Physical memory shared across two (simulated) servers with V2 fabric handles: A, on the first server,
 * exports an allocation as ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, whitelists B and sends the 128-byte handle;
 * B, on a second server (another simulator directory, ACLSHM_SIM_DIR_B), imports it on its current
 * device, maps it, reads A's bytes and writes its own, which A reads back. A plain (DEFAULT) handle of
 * the same kind means nothing on the other server and is refused.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "common.h"

#define SIZE (2u << 20)

int main(void) {
    channel a, b;
    const char *second = getenv("ACLSHM_SIM_DIR_B");
    if (second == NULL) {
        fprintf(stderr, "ACLSHM_SIM_DIR_B names the second server's simulator directory\n");
        return 1;
    }
    pid_t child = start_pair(&a, &b);
    aclrtMemFabricHandle fabric;
    uint64_t plain = 0;
    static unsigned char buf[SIZE];
    char done = 0;

    if (child == 0) {
        /* Process B lives on the second server. */
        setenv("ACLSHM_SIM_DIR", second, 1);
        int32_t pid = 0;
        aclrtDrvMemHandle h = NULL, other = NULL;
        void *va = NULL;
        CHECK(aclInit(NULL));
        CHECK(aclrtSetDevice(1));
        CHECK(aclrtDeviceGetBareTgid(&pid));
        recv_bytes(&b, &fabric, sizeof fabric);
        recv_bytes(&b, &plain, sizeof plain);
        EXPECT(aclrtMemImportFromShareableHandleV2(&plain, ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT, 0, &other),
               ACL_ERROR_RT_INVALID_HANDLE);
        EXPECT(aclrtMemImportFromShareableHandleV2(&fabric, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, 1, &h),
               ACL_ERROR_INVALID_PARAM);
        EXPECT(aclrtMemImportFromShareableHandleV2(&fabric, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, 0, &h),
               ACL_ERROR_RT_DRV_INTERNAL_ERROR); /* not whitelisted yet */
        send_bytes(&b, &pid, sizeof pid);
        recv_bytes(&b, &done, 1);
        CHECK(aclrtMemImportFromShareableHandleV2(&fabric, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, 0, &h));
        CHECK(aclrtReserveMemAddress(&va, SIZE, 0, NULL, 0));
        CHECK(aclrtMapMem(va, SIZE, 0, h, 0));
        CHECK(aclrtMemcpy(buf, SIZE, va, SIZE, ACL_MEMCPY_DEVICE_TO_HOST));
        for (size_t i = 0; i < SIZE; i++) {
            if (buf[i] != (unsigned char)(i * 13 + 1)) {
                fprintf(stderr, "B: byte %zu is %u\n", i, buf[i]);
                return 1;
            }
        }
        memset(buf, 0xB5, SIZE / 2);
        CHECK(aclrtMemcpy(va, SIZE, buf, SIZE / 2, ACL_MEMCPY_HOST_TO_DEVICE));
        CHECK(aclrtUnmapMem(va));
        CHECK(aclrtReleaseMemAddress(va));
        CHECK(aclrtFreePhysical(h));
        send_bytes(&b, &done, 1);
        CHECK(aclrtResetDevice(1));
        CHECK(aclFinalize());
        return 0;
    }

    aclrtPhysicalMemProp p = device_prop(0, ACL_HBM_MEM_HUGE);
    aclrtDrvMemHandle h = NULL, h2 = NULL;
    void *va = NULL;
    int32_t pid = 0;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtMallocPhysical(&h, SIZE, &p, 0));
    CHECK(aclrtMallocPhysical(&h2, SIZE, &p, 0));
    EXPECT(aclrtMemExportToShareableHandleV2(h, 0, (aclrtMemSharedHandleType)3, &fabric), ACL_ERROR_RT_PARAM_INVALID);
    CHECK(aclrtMemExportToShareableHandleV2(h, 0, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, &fabric));
    EXPECT(aclrtMemExportToShareableHandleV2(h, 0, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, &fabric),
           ACL_ERROR_RT_DRV_INTERNAL_ERROR); /* one-to-one */
    CHECK(aclrtMemExportToShareableHandleV2(h2, ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION,
                                            ACL_MEM_SHARE_HANDLE_TYPE_DEFAULT, &plain));
    CHECK(aclrtReserveMemAddress(&va, SIZE, 0, NULL, 0));
    CHECK(aclrtMapMem(va, SIZE, 0, h, 0));
    for (size_t i = 0; i < SIZE; i++) buf[i] = (unsigned char)(i * 13 + 1);
    CHECK(aclrtMemcpy(va, SIZE, buf, SIZE, ACL_MEMCPY_HOST_TO_DEVICE));
    send_bytes(&a, &fabric, sizeof fabric);
    send_bytes(&a, &plain, sizeof plain);
    recv_bytes(&a, &pid, sizeof pid);
    EXPECT(aclrtMemSetPidToShareableHandleV2(&fabric, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, &pid, 0), ACL_ERROR_INVALID_PARAM);
    CHECK(aclrtMemSetPidToShareableHandleV2(&fabric, ACL_MEM_SHARE_HANDLE_TYPE_FABRIC, &pid, 1));
    send_bytes(&a, &done, 1);
    recv_bytes(&a, &done, 1);
    CHECK(aclrtMemcpy(buf, SIZE, va, SIZE, ACL_MEMCPY_DEVICE_TO_HOST));
    for (size_t i = 0; i < SIZE; i++) {
        unsigned char want = i < SIZE / 2 ? 0xB5 : (unsigned char)(i * 13 + 1);
        if (buf[i] != want) {
            fprintf(stderr, "A: byte %zu is %u, expected %u\n", i, buf[i], want);
            return 1;
        }
    }
    CHECK(aclrtUnmapMem(va));
    CHECK(aclrtReleaseMemAddress(va));
    CHECK(aclrtFreePhysical(h));
    CHECK(aclrtFreePhysical(h2));
    CHECK(aclrtResetDevice(0));
    CHECK(aclFinalize());
    return finish_pair(child, "fabric_cross_server");
}
