;; ban: bans a player for 60 s of log time when the rule `spam` matches
;; (examples/plugins/spam.rule: five transactions within two seconds).
;;
;;   garrison rules deploy examples/plugins/spam.rule
;;   garrison plugin deploy examples/plugins/ban.wat --name ban --on spam
;;
;; The match arrives as JSON with sorted keys: its fields hold
;; "player":"<64 hex digits>", and "log_time_ms":<digits> is the log time
;; of the entry that completed it. The plugin proposes
;;   put ban/<player>:until_ms=<log time + 60000>
;; and the location refuses that player's transactions (Rejection::Banned)
;; until its log time passes the end: 60 s of log time on every replica,
;; whatever their clocks say.
(module
  (import "garrison" "propose" (func $propose (param i32 i32 i32 i32) (result i32)))
  (import "garrison" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "\"player\":\"")       ;; 10 bytes
  (data (i32.const 32) "\"log_time_ms\":")    ;; 14 bytes
  (data (i32.const 64) "put ban/")            ;; 8 bytes
  (data (i32.const 80) ":until_ms=")          ;; 10 bytes

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

  ;; Writes `v` in decimal at `at`; returns how many digits.
  (func $decimal (param $v i64) (param $at i32) (result i32)
    (local $n i32) (local $t i64) (local $i i32)
    ;; Count the digits.
    (local.set $t (local.get $v))
    (loop $count
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $t (i64.div_u (local.get $t) (i64.const 10)))
      (br_if $count (i64.ne (local.get $t) (i64.const 0))))
    ;; Fill them in from the right.
    (local.set $i (local.get $n))
    (loop $fill
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $at) (local.get $i))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $fill (i32.gt_s (local.get $i) (i32.const 0))))
    (local.get $n))

  (func (export "on_event") (param $kp i32) (param $kl i32) (param $ep i32) (param $el i32) (result i32)
    (local $player i32) (local $at i32) (local $time i64) (local $c i32) (local $n i32)
    (local.set $player (call $find (local.get $ep) (local.get $el) (i32.const 16) (i32.const 10)))
    (if (i32.lt_s (local.get $player) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $at (call $find (local.get $ep) (local.get $el) (i32.const 32) (i32.const 14)))
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const 1))))
    ;; The log time's digits.
    (block $end
      (loop $digit
        (local.set $c (i32.load8_u (local.get $at)))
        (br_if $end (i32.lt_u (local.get $c) (i32.const 48)))
        (br_if $end (i32.gt_u (local.get $c) (i32.const 57)))
        (local.set $time
          (i64.add (i64.mul (local.get $time) (i64.const 10))
                   (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48)))))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $digit)))
    ;; "put ban/" PLAYER ":until_ms=" (TIME + 60000) at 256.
    (memory.copy (i32.const 256) (i32.const 64) (i32.const 8))
    (memory.copy (i32.const 264) (local.get $player) (i32.const 64))
    (memory.copy (i32.const 328) (i32.const 80) (i32.const 10))
    (local.set $n (call $decimal (i64.add (local.get $time) (i64.const 60000)) (i32.const 338)))
    (if (call $propose (i32.const 0) (i32.const 0) (i32.const 256) (i32.add (i32.const 82) (local.get $n)))
      (then (return (i32.const 1))))
    ;; The operation itself is the log line.
    (call $log (i32.const 260) (i32.add (i32.const 78) (local.get $n)))
    (i32.const 0)))
