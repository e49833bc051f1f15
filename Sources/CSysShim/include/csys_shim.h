#ifndef CUSTOS_CSYS_SHIM_H
#define CUSTOS_CSYS_SHIM_H
/* Calls Swift cannot make directly: prctl(2) is variadic. */
int custos_set_dumpable(int on);
int custos_get_dumpable(void);
#endif
