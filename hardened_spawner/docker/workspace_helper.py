"""The program the short-lived preparation container runs (standard library only).

The hub never needs a root shell on the Docker host: it starts this file, via
``python3 -c``, in a throw-away container from the user's own image, as root
but with only CHOWN and FOWNER (DAC_READ_SEARCH as well when adoption is
allowed), no network and a read-only root. It

1. makes the user's workspace volume, mounted at ``/workspace``, owned by
   the user's UID:GID with mode 0700 -- or refuses, if it belongs to someone
   else and the admin did not allow adoption. A fresh one also gets what a server
   start would otherwise write into it (`FIRST_START`), so that a workspace at its
   quota still starts;
2. writes ``passwd`` and ``group`` for the user into ``/identity/<uid>/``,
   built from the image's own files, so that ``id -un``, ``whoami`` and
   ``~`` work although the image has no entry for the UID and ``/etc`` is
   read-only in the server container.

It prints one JSON object and exits 0, or 3 when it refused. Being imported by
the hub too (its decisions are unit-tested there), it must stay free of
anything but the standard library and run on the oldest Python 3 an image has.
"""

import json
import os
import sys

WORKSPACE = "/workspace"
IDENTITY = "/identity"
EXIT_REFUSED = 3

READY = "ready"  # already owned by the user
INITIALISE = "initialise"  # a fresh, empty, root-owned volume: give it to the user
ADOPT = "adopt"  # owned by another UID, and the admin allows re-owning it
REFUSE = "refuse"

#: Made in a fresh workspace, owned by the user: jupyter_core's marker that its one-time
#: migration of IPython 3 files is done (``~/.jupyter/migrated``). Without it, every server
#: start that finds ``~/.ipython`` (made by the first kernel) creates ``~/.jupyter`` and the
#: marker, and in a workspace at its quota that start dies with "Disk quota exceeded".
FIRST_START = ((".jupyter", 0o700), (".jupyter/migrated", 0o600))


def decide(owner_uid, is_empty, uid, adopt):
    """What to do with a workspace whose top directory belongs to ``owner_uid``.

    Only an empty root-owned directory is a fresh volume. Anything else that
    is not the user's holds somebody's data: it is re-owned only when the
    admin explicitly allows adoption, never silently.
    """
    if owner_uid == uid:
        return READY
    if owner_uid == 0 and is_empty:
        return INITIALISE
    return ADOPT if adopt else REFUSE


def merge_account_file(image_text, entry):
    """Add ``entry`` to an image's passwd/group text, replacing any clash.

    The image's own accounts stay (so ``ls -l`` still shows ``root``), but a
    line with the same name or the same numeric id is dropped, so the user's
    name and number each resolve to exactly one account.
    """
    name, _, number = entry.split(":")[:3]
    kept = []
    for line in image_text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or fields[0] == name or fields[2] == number:
            continue
        kept.append(line)
    kept.append(entry)
    return "\n".join(kept) + "\n"


def _write_public(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _seed(top, uid, gid):
    """`FIRST_START` in a fresh (empty, root-owned) workspace: nothing of the user's is
    there yet, so no link of theirs can redirect these writes. Everything is made first and
    given away after, innermost first: the helper has no DAC_OVERRIDE, so it cannot write
    into a folder once that folder is the user's 0700."""
    for name, mode in FIRST_START:
        path = os.path.join(top, name)
        if mode & 0o100:
            os.mkdir(path, 0o700)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    for name, mode in reversed(FIRST_START):
        path = os.path.join(top, name)
        os.lchown(path, uid, gid)
        os.chmod(path, mode)


def _adopt(top, uid, gid):
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def main():
    uid = int(os.environ["HS_UID"])
    gid = int(os.environ["HS_GID"])
    adopt = os.environ.get("HS_ADOPT") == "1"

    st = os.stat(WORKSPACE)
    is_empty = st.st_uid == 0 and not os.listdir(WORKSPACE)
    action = decide(st.st_uid, is_empty, uid, adopt)
    result = {"action": action, "owner_uid": st.st_uid, "owner_gid": st.st_gid}
    if action == REFUSE:
        print(json.dumps(result))
        return EXIT_REFUSED
    if action == ADOPT:
        _adopt(WORKSPACE, uid, gid)
    if action == INITIALISE:
        _seed(WORKSPACE, uid, gid)
    os.chown(WORKSPACE, uid, gid)
    os.chmod(WORKSPACE, 0o700)

    target = os.path.join(IDENTITY, str(uid))
    os.makedirs(target, mode=0o755, exist_ok=True)
    _write_public(
        os.path.join(target, "passwd"),
        merge_account_file(_read("/etc/passwd"), os.environ["HS_PASSWD_ENTRY"]),
    )
    _write_public(
        os.path.join(target, "group"),
        merge_account_file(_read("/etc/group"), os.environ["HS_GROUP_ENTRY"]),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
