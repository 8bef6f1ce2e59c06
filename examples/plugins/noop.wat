;; noop: the smallest plugin: it takes every event and does nothing. A
;; template (the three exports the ABI needs), and what the benchmark
;; measures as a plugin's floor cost per event:
;;
;;   garrison plugin deploy examples/plugins/noop.wat --name noop
(module
  (memory (export "memory") 1)
  ;; The host writes the event's kind and JSON here; up to 60 KiB fit,
  ;; and a longer event grows the memory.
  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 61440))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))))))
    (i32.const 4096))
  (func (export "on_event") (param i32 i32 i32 i32) (result i32)
    (i32.const 0)))
