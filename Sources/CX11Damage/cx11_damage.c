#include "cx11_damage.h"
#include <X11/Xlibint.h>
#include <X11/extensions/damageproto.h>

int cx11_damage_query(Display *dpy) {
    int major = 0, event_base = 0, error_base = 0;
    if (!XQueryExtension(dpy, DAMAGE_NAME, &major, &event_base, &error_base)) return 0;
    xDamageQueryVersionReq *req;
    xDamageQueryVersionReply rep;
    LockDisplay(dpy);
    GetReq(DamageQueryVersion, req);
    req->reqType = (CARD8)major;
    req->damageReqType = X_DamageQueryVersion;
    req->majorVersion = DAMAGE_MAJOR;
    req->minorVersion = DAMAGE_MINOR;
    int ok = _XReply(dpy, (xReply *)&rep, 0, xTrue);
    UnlockDisplay(dpy);
    SyncHandle();
    return ok ? major : 0;
}

unsigned long cx11_damage_create(Display *dpy, int major, unsigned long drawable, int level) {
    xDamageCreateReq *req;
    XID damage;
    LockDisplay(dpy);
    GetReq(DamageCreate, req);
    req->reqType = (CARD8)major;
    req->damageReqType = X_DamageCreate;
    req->damage = (CARD32)(damage = XAllocID(dpy));
    req->drawable = (CARD32)drawable;
    req->level = (CARD8)level;
    UnlockDisplay(dpy);
    SyncHandle();
    return damage;
}

void cx11_damage_subtract(Display *dpy, int major, unsigned long damage, unsigned long parts) {
    xDamageSubtractReq *req;
    LockDisplay(dpy);
    GetReq(DamageSubtract, req);
    req->reqType = (CARD8)major;
    req->damageReqType = X_DamageSubtract;
    req->damage = (CARD32)damage;
    req->repair = None;
    req->parts = (CARD32)parts;
    UnlockDisplay(dpy);
    SyncHandle();
}

void cx11_damage_destroy(Display *dpy, int major, unsigned long damage) {
    xDamageDestroyReq *req;
    LockDisplay(dpy);
    GetReq(DamageDestroy, req);
    req->reqType = (CARD8)major;
    req->damageReqType = X_DamageDestroy;
    req->damage = (CARD32)damage;
    UnlockDisplay(dpy);
    SyncHandle();
}
