#!/bin/sh
# The example checker: an attested approver that approves a proposal only if it keeps every
# service's measurements (its attestation alternatives) and the session's secret set (names
# and kinds), and rejects it otherwise. The input file names the proposal (its first line).
#
# The runtime holds the approver key; this script only asks it, over $CLOISTER_APPROVER_SOCKET,
# to `show` a proposal (the change, the current version and the proposed one, as JSON) and to
# `approve` or `reject` it. The verdict goes to $TMP_OUTPUT_DIR as JSON.
exec /usr/bin/python3 - "$INPUT_FILE_PATH" <<'PYTHON'
import json, os, socket, sys

def ask(sock, request):
    sock.sendall(request.encode() + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return json.loads(answer)

def services(session):
    return {s["name"]: s for s in session.get("services", [])}

def secrets(session):
    return {(s["name"], s.get("kind")) for s in session.get("secrets", [])}

def changes_code_or_secrets(current, proposed):
    """Why the proposed version does not keep what the current one runs and holds, or None."""
    now, then = services(current), services(proposed)
    if set(now) != set(then):
        return "the services change: %s -> %s" % (sorted(now), sorted(then))
    for name, service in sorted(now.items()):
        if then[name].get("attestation") != service.get("attestation"):
            return "service %r would run other code (its measurements change)" % name
    if secrets(current) != secrets(proposed):
        return "the secret set changes"
    return None

with open(sys.argv[1]) as f:
    proposal = f.readline().strip()
verdict = {"proposal": proposal}
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.connect(os.environ["CLOISTER_APPROVER_SOCKET"])
    shown = ask(sock, "show " + proposal)
    if "error" in shown:
        verdict["error"] = shown["error"]
    else:
        reason = changes_code_or_secrets(shown["current"], shown["proposed"])
        vote = "approve" if reason is None else "reject"
        verdict.update(session=shown["change"]["session"], decision=vote, reason=reason)
        voted = ask(sock, "%s %s" % (vote, proposal))
        if "error" in voted:
            verdict["error"] = voted["error"]
        else:
            verdict.update(state=voted["state"], key=voted["key"])
name = os.path.basename(sys.argv[1])
with open(os.path.join(os.environ["TMP_OUTPUT_DIR"], name + ".verdict.json"), "w") as f:
    json.dump(verdict, f, indent=2)
print(json.dumps(verdict))
sys.exit(1 if "error" in verdict else 0)
PYTHON
