from .hubtools import Kernel


def test_spawn_and_run(hub):
    hub.create_user("smoke")
    result = hub.spawn("smoke")
    assert result.ready, (result, hub.log_tail())
    kernel = Kernel(hub, "smoke")
    print(kernel.run("import os, getpass; print(os.getuid(), getpass.getuser(), os.getcwd())"))
    kernel.close()
    hub.stop_server("smoke")
