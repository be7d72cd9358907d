/*
 * An IPC notify with a pid whitelist, as in the official sample "IPC notify with pid": A (device 0)
 * creates a notify, exports it, whitelists B and sends the key; B (device 1) imports it and records it
 * on a stream; A waits for it on its own stream. Only the creator may wait.
 */
#include "common.h"

int main(void) {
    channel a, b;
    pid_t child = start_pair(&a, &b);
    char key[65];

    if (child == 0) {
        int32_t pid = 0;
        aclrtNotify notify = NULL;
        aclrtStream stream = NULL;
        CHECK(aclrtSetDevice(1));
        CHECK(aclrtDeviceGetBareTgid(&pid));
        send_bytes(&b, &pid, sizeof pid);
        recv_bytes(&b, key, sizeof key);
        CHECK(aclrtCreateStream(&stream));
        CHECK(aclrtNotifyImportByKey(&notify, key, ACL_RT_NOTIFY_IMPORT_FLAG_ENABLE_PEER_ACCESS));
        EXPECT(aclrtWaitAndResetNotify(notify, stream, 1), ACL_ERROR_RT_PARAM_INVALID);
        CHECK(aclrtRecordNotify(notify, stream));
        CHECK(aclrtSynchronizeStream(stream));
        CHECK(aclrtDestroyNotify(notify));
        CHECK(aclrtDestroyStream(stream));
        CHECK(aclrtResetDevice(1));
        return 0;
    }

    int32_t pid = 0;
    aclrtNotify notify = NULL;
    aclrtStream stream = NULL;
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtCreateStream(&stream));
    CHECK(aclrtCreateNotify(&notify, ACL_NOTIFY_DEFAULT));
    EXPECT(aclrtNotifyGetExportKey(notify, key, sizeof key, 0x1), ACL_ERROR_RT_PARAM_INVALID);
    CHECK(aclrtNotifyGetExportKey(notify, key, sizeof key, ACL_RT_NOTIFY_EXPORT_FLAG_DEFAULT));
    recv_bytes(&a, &pid, sizeof pid);
    CHECK(aclrtNotifySetImportPid(notify, &pid, 1));
    send_bytes(&a, key, sizeof key);
    CHECK(aclrtWaitAndResetNotify(notify, stream, 30));
    CHECK(aclrtSynchronizeStream(stream));
    CHECK(aclrtDestroyNotify(notify));
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(0));
    return finish_pair(child, "ipc_notify_withpid");
}
