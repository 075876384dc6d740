// canonicalize, cse, dce (xDSL's passes on attnc IR): cse merges equal attn.full splats (12 -> 9 here).
// RUN: attnc compile sparse_attn --config tiny -p gather-keys -o - | filecheck %s --check-prefix=BEFORE
// RUN: attnc compile sparse_attn --config tiny -p 'gather-keys,canonicalize,cse,dce' -o - | filecheck %s --check-prefix=AFTER
// BEFORE-LABEL: func.func @sparse_attn
// BEFORE-COUNT-12: attn.full
// BEFORE-NOT: attn.full
// AFTER-LABEL: func.func @sparse_attn
// AFTER-COUNT-9: attn.full
// AFTER-NOT: attn.full
// AFTER: func.return
