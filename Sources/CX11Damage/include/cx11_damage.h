#ifndef CUSTOS_CX11_DAMAGE_H
#define CUSTOS_CX11_DAMAGE_H
// The four DAMAGE extension requests the screen capturer needs (DAMAGE protocol 1.1,
// damageproto.h), issued with Xlib's request macros. libXdamage's development files are not a
// build dependency; the wire protocol is small and stable.
#include <X11/Xlib.h>

/// Returns the DAMAGE major opcode after negotiating version 1.1, or 0 when the server has no
/// DAMAGE extension.
int cx11_damage_query(Display *dpy);

/// Creates a damage object tracking `drawable` at report `level` (3: NonEmpty); returns its id.
unsigned long cx11_damage_create(Display *dpy, int major, unsigned long drawable, int level);

/// Moves the accumulated damage into the XFixes region `parts` (if not 0) and clears it
/// (DamageSubtract with repair None).
void cx11_damage_subtract(Display *dpy, int major, unsigned long damage, unsigned long parts);

/// Destroys a damage object.
void cx11_damage_destroy(Display *dpy, int major, unsigned long damage);

#endif
