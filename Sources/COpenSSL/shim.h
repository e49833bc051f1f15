#ifndef CUSTOS_COPENSSL_SHIM_H
#define CUSTOS_COPENSSL_SHIM_H
/* System OpenSSL (libcrypto 3), used by Envelope only where swift-crypto cannot do the job:
   traditional "Proc-Type: 4,ENCRYPTED" private keys and strict SPKI / PKCS#1 decoding. */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/crypto.h>

/* ERR_GET_LIB / ERR_GET_REASON are macros / static inlines; Swift calls these. */
static inline int ERR_GET_LIB_shim(unsigned long e) { return ERR_GET_LIB(e); }
static inline int ERR_GET_REASON_shim(unsigned long e) { return ERR_GET_REASON(e); }
#endif
