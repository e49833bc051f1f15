import CaptureCore
import CaptureX11

/// The capture backends this agent is built with. The only file of the Agent module that names
/// a backend: the pipeline (`CaptureService`, `--check-config`) sees only the seam.
public enum CaptureBackends {
    /// The backend the agent records with: X11.
    public static let standard: any CaptureBackend = X11Backend()
}
