// schedule-compressor: compress_pool -> one pooling per batch row read from the state rings in place (row), or
// each token's window gathered from [ring | step] (token).
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor{schedule=row}' -o - | filecheck %s --check-prefix=ROW
// RUN: attnc compile compressor --config tiny -p 'schedule-compressor{schedule=token}' -o - | filecheck %s --check-prefix=TOKEN
// ROW-LABEL: func.func @compressor
// ROW-NOT: attn.compress_pool
// ROW-NOT: attn.concat
// ROW-NOT: attn.transpose
// ROW: attn.slice
// ROW: attn.exp
// ROW: attn.div
// ROW-NOT: attn.compress_pool
// ROW: func.return
// TOKEN-LABEL: func.func @compressor
// TOKEN-NOT: attn.compress_pool
// TOKEN: attn.concat
// TOKEN: attn.gather_rows
// TOKEN: attn.exp
// TOKEN-NOT: attn.compress_pool
// TOKEN: func.return
