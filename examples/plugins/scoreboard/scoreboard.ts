// scoreboard: counts each player's kills from `unit_lost` game events.
//
//   garrison plugin deploy examples/plugins/scoreboard/scoreboard.wasm \
//       --name scoreboard --on unit_lost
//   garrison tx -l alpha --key GAME_MASTER.key --emit unit_lost:unit=unit/7,by=erin
//
// For an event whose fields name the killer (`by`), it reads the entity
// `score/<by>` through the host API and proposes `put score/<by>:kills=1`
// if there is none yet, or `incr score/<by>:kills=1`. The host applies it
// in the same log entry as the event, so every replica counts the same.
//
// Rebuild scoreboard.wasm with ./build.sh (AssemblyScript from npm).

@external("garrison", "read")
declare function hostRead(keyPtr: usize, keyLen: i32, outPtr: usize, outCap: i32): i32;
@external("garrison", "propose")
declare function hostPropose(locPtr: usize, locLen: i32, opsPtr: usize, opsLen: i32): i32;
@external("garrison", "log")
declare function hostLog(ptr: usize, len: i32): void;

// The host asks for room for the event here.
export function alloc(len: i32): usize {
  return heap.alloc(<usize>len);
}

// The string value of `"name":"..."` in the event's JSON, or null.
function field(json: string, name: string): string | null {
  const needle = '"' + name + '":"';
  const at = json.indexOf(needle);
  if (at < 0) return null;
  const start = at + needle.length;
  const end = json.indexOf('"', start);
  if (end < 0) return null;
  return json.substring(start, end);
}

function log(text: string): void {
  const bytes = String.UTF8.encode(text);
  hostLog(changetype<usize>(bytes), bytes.byteLength);
}

export function on_event(kindPtr: usize, kindLen: i32, eventPtr: usize, eventLen: i32): i32 {
  const json = String.UTF8.decodeUnsafe(eventPtr, <usize>eventLen);
  const by = field(json, "by");
  if (by === null) return 0;
  const key = "score/" + by;
  const keyBytes = String.UTF8.encode(key);
  // Only the length matters here: -1 means there is no such entity.
  const found = hostRead(changetype<usize>(keyBytes), keyBytes.byteLength, 0, 0);
  const ops = found < 0 ? "put " + key + ":kills=1" : "incr " + key + ":kills=1";
  const opsBytes = String.UTF8.encode(ops);
  if (hostPropose(0, 0, changetype<usize>(opsBytes), opsBytes.byteLength) != 0) return 1;
  log("a kill for " + by);
  return 0;
}

// AssemblyScript would import env.abort; a plugin may import only the
// host API, so a failed assertion traps instead.
export function abort(message: usize, file: usize, line: u32, column: u32): void {
  unreachable();
}
