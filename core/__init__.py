"""The shared core every layer may import: the input error (errors), atomic file and folder writes (io), camera
geometry and rays (geometry) and plain sphere tracing of an SDF (tracing). It imports nothing else of ours."""
