import Foundation

/// A `TaskExecutor` with threads of its own, for the collectors tests run in their own process.
///
/// In production the collector is a process of its own, and its handlers have the cooperative
/// pool (one thread per core) to themselves. In a test process that pool is shared with up to
/// ~90 tests running at once, some of which wait on child processes (`openssl`, `sqlite3`) on a
/// cooperative thread; on 2 cores two such waits starve every in-process collector for
/// seconds (a refused request answered 18 s late was seen in the full NetTests run, against
/// 2 s alone). Running the collector's tasks here instead (`Task(executorPreference:)`, which
/// its child tasks and task groups inherit, SE-0417) makes its timing a separate process's again.
public final class ThreadTaskExecutor: TaskExecutor, @unchecked Sendable {
    /// The executor every ``TestCollector`` runs on.
    public static let collectors = ThreadTaskExecutor(threads: 4, name: "test-collector")

    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []  // guarded by `condition`
    private var next = 0                 // index of the first job not taken

    /// Starts `threads` threads named `name-N` that run enqueued jobs in order, for ever.
    public init(threads: Int, name: String) {
        for n in 0..<threads {
            let thread = Thread { [unowned self] in self.work() }
            thread.name = "\(name)-\(n)"
            thread.start()
        }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while next == jobs.count { condition.wait() }
            let job = jobs[next]
            next += 1
            if next > 1024 && next * 2 > jobs.count {
                jobs.removeFirst(next)
                next = 0
            }
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
