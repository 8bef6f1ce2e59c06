;; depot: refills a depot each time a `resupply` game event names it.
;;
;;   garrison plugin deploy examples/plugins/depot.wat --name depot --on resupply
;;   garrison tx -l alpha --key GAME_MASTER.key --emit resupply:depot=depot/1
;;
;; The event arrives as JSON with sorted keys, so its fields read
;; {"fields":{"depot":"depot/1",...},...}. The plugin finds `"depot":"`,
;; takes the key up to the next quote, and proposes one operation:
;;   incr DEPOT:ammo=10,max=100
;; which the host applies in the same log entry as the event, under the
;; plugin's role. A depot that does not exist makes the increment fail:
;; the plugin's failure is recorded and nothing changes.
(module
  (import "garrison" "propose" (func $propose (param i32 i32 i32 i32) (result i32)))
  (import "garrison" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "\"depot\":\"")        ;; 9 bytes: what to look for
  (data (i32.const 32) "incr ")               ;; 5 bytes
  (data (i32.const 40) ":ammo=10,max=100")    ;; 16 bytes
  (data (i32.const 64) "refilled ")           ;; 9 bytes

  ;; The event goes at 4096; the memory grows to hold it.
  (func (export "alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need (i32.add (i32.const 4096) (local.get $len)))
    (if (i32.gt_u (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (drop (memory.grow
          (i32.div_u
            (i32.add
              (i32.sub (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
              (i32.const 65535))
            (i32.const 65536))))))
    (i32.const 4096))

  ;; The address just past the first `needle` in [hay, hay+len), or -1.
  (func $find (param $hay i32) (param $len i32) (param $needle i32) (param $nlen i32) (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $next
        (br_if $none (i32.gt_s (i32.add (local.get $i) (local.get $nlen)) (local.get $len)))
        (local.set $j (i32.const 0))
        (block $differs
          (loop $cmp
            (br_if $differs
              (i32.ne
                (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))
                (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (local.get $nlen))
              (then (return (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))))
            (br $cmp)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const -1))

  (func (export "on_event") (param $kp i32) (param $kl i32) (param $ep i32) (param $el i32) (result i32)
    (local $at i32) (local $end i32) (local $stop i32) (local $n i32)
    (local.set $at (call $find (local.get $ep) (local.get $el) (i32.const 16) (i32.const 9)))
    ;; No depot named: nothing to do.
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $stop (i32.add (local.get $ep) (local.get $el)))
    (local.set $end (local.get $at))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $end) (local.get $stop)))
        (br_if $done (i32.eq (i32.load8_u (local.get $end)) (i32.const 34)))
        (local.set $end (i32.add (local.get $end) (i32.const 1)))
        (br $scan)))
    (local.set $n (i32.sub (local.get $end) (local.get $at)))
    ;; An entity key is at most 128 bytes: a longer value names no depot.
    (if (i32.gt_u (local.get $n) (i32.const 128)) (then (return (i32.const 0))))
    ;; "incr " DEPOT ":ammo=10,max=100" at 256.
    (memory.copy (i32.const 256) (i32.const 32) (i32.const 5))
    (memory.copy (i32.const 261) (local.get $at) (local.get $n))
    (memory.copy (i32.add (i32.const 261) (local.get $n)) (i32.const 40) (i32.const 16))
    (if (call $propose (i32.const 0) (i32.const 0) (i32.const 256) (i32.add (local.get $n) (i32.const 21)))
      (then (return (i32.const 1))))
    ;; "refilled " DEPOT at 1024, for `garrison plugin logs`.
    (memory.copy (i32.const 1024) (i32.const 64) (i32.const 9))
    (memory.copy (i32.const 1033) (local.get $at) (local.get $n))
    (call $log (i32.const 1024) (i32.add (local.get $n) (i32.const 9)))
    (i32.const 0)))
