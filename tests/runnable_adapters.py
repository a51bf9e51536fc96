"""The conformance adapters of the backends the registry can run here, for tests that
parametrise over backends outside tests/conformance (whose own loader also reports broken
adapters as failures; here a broken adapter is skipped, since tests/conformance fails on it)."""
import backend_registry as registry


def runnable_adapters() -> list:
    """[(backend name, adapter)] in registry order."""
    out = []
    for b in registry.available():
        try:
            out.append((b.name, b.adapter()))
        except Exception:  # noqa: BLE001 - a broken adapter fails in tests/conformance
            continue
    return out
