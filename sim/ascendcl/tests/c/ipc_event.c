/*
 * IPC events across two processes and two devices, in the flow of the official sample "ipcevent multi
 * device": A (device 0) creates an event with ACL_EVENT_IPC, records it, synchronises it, checks it is
 * complete and exports its handle; B (device 1) opens the handle, makes its stream wait for the event,
 * records the event itself and synchronises it. Then A waits for B's record. Refusals on the way: only
 * aclrtCreateEventExWithFlag makes IPC events, a local event has no IPC handle, the creator cannot open
 * its own handle.
 */
#include "common.h"

int main(void) {
    channel a, b;
    pid_t child = start_pair(&a, &b);
    aclrtIpcEventHandle handle;
    char done = 0;

    if (child == 0) {
        aclrtEvent event = NULL;
        aclrtStream stream = NULL;
        aclrtEventRecordedStatus status = ACL_EVENT_RECORDED_STATUS_NOT_READY;
        CHECK(aclInit(NULL));
        CHECK(aclrtSetDevice(1));
        CHECK(aclrtCreateStream(&stream));
        recv_bytes(&b, &handle, sizeof handle);
        CHECK(aclrtIpcOpenEventHandle(handle, &event));
        CHECK(aclrtStreamWaitEvent(stream, event));
        CHECK(aclrtSynchronizeStream(stream));
        EXPECT(aclrtIpcGetEventHandle(event, &handle), ACL_ERROR_RT_PARAM_INVALID);
        CHECK(aclrtRecordEvent(event, stream));
        CHECK(aclrtSynchronizeEvent(event));
        CHECK(aclrtQueryEventStatus(event, &status));
        if (status != ACL_EVENT_RECORDED_STATUS_COMPLETE) {
            fprintf(stderr, "B: the event is not complete after synchronising it\n");
            return 1;
        }
        send_bytes(&b, &done, 1);
        recv_bytes(&b, &done, 1);
        CHECK(aclrtDestroyEvent(event));
        CHECK(aclrtDestroyStream(stream));
        CHECK(aclrtResetDevice(1));
        CHECK(aclFinalize());
        return 0;
    }

    aclrtEvent event = NULL, local = NULL;
    aclrtStream stream = NULL;
    aclrtEventRecordedStatus status = ACL_EVENT_RECORDED_STATUS_NOT_READY;
    aclrtIpcEventHandle again;
    CHECK(aclInit(NULL));
    CHECK(aclrtSetDevice(0));
    CHECK(aclrtCreateStream(&stream));
    EXPECT(aclrtCreateEventWithFlag(&local, ACL_EVENT_IPC), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtCreateEventExWithFlag(&local, ACL_EVENT_IPC | ACL_EVENT_SYNC), ACL_ERROR_RT_PARAM_INVALID);
    CHECK(aclrtCreateEvent(&local));
    EXPECT(aclrtIpcGetEventHandle(local, &handle), ACL_ERROR_RT_PARAM_INVALID);
    CHECK(aclrtDestroyEvent(local));
    CHECK(aclrtCreateEventExWithFlag(&event, ACL_EVENT_IPC));
    CHECK(aclrtRecordEvent(event, stream));
    CHECK(aclrtSynchronizeEvent(event));
    CHECK(aclrtQueryEventStatus(event, &status));
    if (status != ACL_EVENT_RECORDED_STATUS_COMPLETE) {
        fprintf(stderr, "A: the event is not complete after synchronising it\n");
        return 1;
    }
    CHECK(aclrtIpcGetEventHandle(event, &handle));
    CHECK(aclrtIpcGetEventHandle(event, &again));
    if (memcmp(&handle, &again, sizeof handle) != 0) {
        fprintf(stderr, "A: exporting again gave another handle\n");
        return 1;
    }
    EXPECT(aclrtIpcOpenEventHandle(handle, &local), ACL_ERROR_RT_DRV_INTERNAL_ERROR);
    send_bytes(&a, &handle, sizeof handle);
    recv_bytes(&a, &done, 1);
    /* B recorded the event after its wait: wait for that record here. */
    CHECK(aclrtStreamWaitEvent(stream, event));
    CHECK(aclrtSynchronizeStream(stream));
    CHECK(aclrtSynchronizeEvent(event));
    send_bytes(&a, &done, 1);
    CHECK(aclrtDestroyEvent(event));
    CHECK(aclrtDestroyStream(stream));
    CHECK(aclrtResetDevice(0));
    CHECK(aclFinalize());
    return finish_pair(child, "ipc_event");
}
